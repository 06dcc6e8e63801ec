"""Pipeline parallelism: which layers each pipeline rank holds, how many micro-batches of activations its
schedule keeps in flight, the P2P buffers, and the bubble.

Layers split over `pp x pp_virtual` stages (`ParallelPlan.pp_layers`, or an even split whose remainder goes
to the middle stages, since the first stage also holds the embedding and the last the head and the loss).
Rank r runs stages r, r + pp, r + 2pp, ... (the looped placement of torch's interleaved schedules).

In flight, per rank r (m micro-batches per step, p ranks, v stages per rank), counted in stage-chunks:
- GPipe: every forward runs before any backward, so all m micro-batches of every local stage;
- 1F1B (Narayanan et al. 2021, §2.2): min(m, p - r - 1) warm-up forwards, +1 in steady state: rank 0 holds
  p micro-batches, the last rank 1;
- interleaved 1F1B: torch's warm-up, (v - 1) x micro-batches-per-round + 2 (p - r - 1), capped at v·m,
  +1; on rank 0 that is Megatron's (1 + (p - 1)/(p v)) times the 1F1B first stage (Korthikanti et al. 2022,
  §4.2.3 / Narayanan et al. 2021, §2.2.2);
- zero-bubble (interleaved, Qi et al. 2023): torch's warm-up advances one chunk per hop, not two; the
  inputs it keeps for the deferred weight gradients are not modelled.

Bubble (idle time over ideal compute time; Narayanan et al. 2021): (p - 1)/m for GPipe and 1F1B,
(p - 1)/(v m) interleaved, (p - 1)/(3 v m) zero-bubble. `tests/test_pipeline_plan.py` holds each against
torch's own action lists (`pipeline_order`) replayed in dependency order with backward = 2 x forward (the
zero-bubble's input and weight halves one forward each), where the idle share is bubble / (1 + bubble).
(The lists' own `None` slots are padding that torch skips at run time, not idle time.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.core.parallel import MULTI_STAGE_SCHEDULES, ParallelPlan


@dataclass(frozen=True)
class StageShare:
    """What one pipeline rank holds."""

    rank: int
    stages: tuple[int, ...]  # virtual stage indices on this rank
    layers: int  # transformer blocks over its stages
    embedding: bool  # the first stage: token embedding
    head: bool  # the last stage: final norm, output head and loss
    in_flight: float  # micro-batches of this rank's layers whose activations are held at the peak
    dense_layers: int = 0  # of `layers`, an MoE model's leading dense ones (they sit on the first stages)
    layer_indices: tuple[int, ...] = ()  # the model-wide indices of its layers (which ones `every`-k checkpoints)
    decoder_layers: int = 0  # of `layers`, an encoder-decoder's decoder blocks (they follow the encoder's)
    encoder_end: bool = False  # an encoder-decoder's stage with the encoder's last block: its final norm
    decoder_stages: int = 0  # this rank's stages holding decoder blocks (each receives the encoder's output)


def stage_layers(layers: int, plan: ParallelPlan) -> list[int]:
    """Blocks per virtual stage, first to last (the layout's own rule: `ParallelPlan.stage_layers`)."""
    return plan.stage_layers(layers)


def warmup_chunks(plan: ParallelPlan, rank: int) -> int:
    """Forward stage-chunks rank `rank` runs before its first backward (torch's schedules)."""
    p, v, m = plan.pp, plan.pp_virtual, plan.grad_accum
    if plan.pp_schedule == "gpipe":
        return m * v
    if plan.pp_schedule in MULTI_STAGE_SCHEDULES:
        per_round = m // max(1, m // p)
        hops = 1 if plan.pp_schedule == "zero-bubble" else 2  # zero-bubble starts its backwards a hop sooner
        return min(v * m, (v - 1) * per_round + hops * (p - rank - 1))
    return min(m, p - rank - 1)


def shares_of(shape, plan: ParallelPlan) -> list[StageShare]:
    """Each pipeline rank's share of `shape`'s blocks (an encoder-decoder's encoder blocks, then its decoder's)."""
    encoder = shape.layers if shape.arch == "encoder-decoder" else None
    return shares(shape.n_blocks, plan, shape.dense_layers, encoder)


def shares(layers: int, plan: ParallelPlan, dense_layers: int = 0, encoder_layers: int | None = None) -> list[StageShare]:
    """Each pipeline rank's share; `dense_layers`: an MoE model's leading dense layers, counted on the stages
    that hold them; `encoder_layers`: an encoder-decoder's encoder blocks, the first of its `layers`."""
    split = stage_layers(layers, plan)
    starts = [sum(split[:i]) for i in range(len(split))]
    enc = layers if encoder_layers is None else encoder_layers
    out = []
    for rank in range(plan.pp):
        stages = tuple(rank + k * plan.pp for k in range(plan.pp_virtual))
        held = sum(split[s] for s in stages)
        if plan.pp_schedule == "gpipe":
            in_flight = float(plan.grad_accum)
        else:
            chunk = held / plan.pp_virtual  # the mean stage of this rank
            in_flight = min(warmup_chunks(plan, rank) + 1, plan.grad_accum * plan.pp_virtual) * chunk / held
        dense = sum(max(0, min(dense_layers, starts[s] + split[s]) - starts[s]) for s in stages)
        indices = tuple(i for s in stages for i in range(starts[s], starts[s] + split[s]))
        decoder = [max(0, starts[s] + split[s] - max(enc, starts[s])) for s in stages]
        end = encoder_layers is not None and any(starts[s] < enc <= starts[s] + split[s] for s in stages)
        out.append(StageShare(rank, stages, held, 0 in stages, plan.pp_stages - 1 in stages, in_flight, dense,
                              layer_indices=indices, decoder_layers=sum(decoder), encoder_end=end,
                              decoder_stages=sum(1 for n in decoder if n)))
    return out


def stage_shape(shape, share: StageShare):
    """The model's shape cut to one pipeline rank's layers (an MoE model's dense ones among them); an
    encoder-decoder's stays whole (its blocks are of two kinds: the share counts them, `activations.stored_bytes`)."""
    if shape.arch == "encoder-decoder":
        return shape
    if shape.moe is None:
        return replace(shape, layers=share.layers)
    return replace(shape, layers=share.layers, moe=replace(shape.moe, dense_layers=share.dense_layers))


def stage_params(shape, share: StageShare) -> int:
    """Parameters on one pipeline rank: its blocks, the embedding on the first stage, the final norm and the
    head on the last (a tied head is a second copy there: the stages hold it apart, as torchtitan does). An
    encoder's embedding LayerNorm sits on the first stage; an encoder-decoder's relative position bias tables on
    the first stage too (with the embedding: `position_params`), its encoder's final norm on the stage of the
    encoder's last block."""
    norm = shape._norm_params()
    head = shape.vocab * shape.hidden if shape.tied_embeddings else shape.head_params()
    if shape.arch == "encoder-decoder":
        encoder = share.layers - share.decoder_layers
        blocks = encoder * (shape.attention_params() + shape.mlp_params() + 2 * norm) \
            + share.decoder_layers * shape.cross_block_params()
        return (blocks + (shape.embedding_params() if share.embedding else 0) + (norm if share.encoder_end else 0)
                + (norm + head if share.head else 0))
    first_norms = norm if shape.embedding_norm else 0
    root_norms = shape.root_params() - shape.embedding_params() - shape.head_params() - first_norms
    return (stage_shape(shape, share).blocks_params() + (shape.embedding_params() + first_norms if share.embedding
                                                         else 0) + (root_norms + head if share.head else 0))


def stage_params_per_tp_rank(shape, share: StageShare, tp: int) -> float:
    """`stage_params` on one tensor-parallel rank: matrices split by TP, the norms whole, and what TP leaves whole
    besides (`ModelShape.tp_replicated_params`: an encoder's MLM transform and row-parallel biases)."""
    if shape.arch == "encoder-decoder":
        count = 2 * share.layers + share.decoder_layers + share.encoder_end + share.head
        whole = count * shape._norm_params()
    elif shape.arch == "encoder":
        whole = (2 * share.layers + share.embedding + share.head) * shape._norm_params() \
            + share.layers * shape.row_parallel_biases() + (shape.mlm_transform_params() if share.head else 0)
    else:
        whole = (2 * share.layers + (1 if share.head else 0)) * shape._norm_params()
    return (stage_params(shape, share) - whole) / tp + whole


def p2p_elements(shape, micro_batch: int, tp: int = 1) -> float:
    """Elements one stage receives per micro-batch (split by TP under sequence parallelism): the hidden state, b x s
    x h; an encoder-decoder's carry in its encoder, the larger (the hidden state, the embedded decoder inputs and
    both relative position biases, one per micro-batch and heads split by TP)."""
    if shape.arch != "encoder-decoder":
        return micro_batch * shape.seq_len * shape.hidden / tp
    s, t = shape.seq_len, shape.n_target_len
    return (micro_batch * (s + t) * shape.hidden + shape.heads * (s * s + t * t)) / tp


def bubble_fraction(plan: ParallelPlan) -> float:
    """Idle time over ideal compute time per step: (p - 1)/m, (p - 1)/(v m) interleaved, and (p - 1)/(3 v m)
    zero-bubble (its backward splits into input and weight gradients, which fill all but one forward's worth
    of each idle slot; backward = 2 x forward). Each equals the idle share of torch's own action list
    replayed in dependency order (`tests/test_pipeline_plan.py`), as bubble / (1 + bubble)."""
    if plan.pp == 1:
        return 0.0
    v = plan.pp_virtual if plan.pp_schedule in MULTI_STAGE_SCHEDULES else 1
    work = 3 if plan.pp_schedule == "zero-bubble" else 1  # the idle slots zero-bubble leaves are F-sized, of F + I + W
    return (plan.pp - 1) / (work * v * plan.grad_accum)


def bubble_seconds(other_ranks_s: list[float], plan: ParallelPlan) -> float:
    """Idle seconds per step on the slowest pipeline rank, given each other rank's busy seconds per step: the
    schedule's fill and drain pass through the other ranks at their own pace, so `bubble_fraction` of their mean
    (with equal stages, (p - 1)/m of a stage's step, the formula above). Replayed on torch's own action lists with
    a cost per stage (`tests/test_pipeline_plan.py`): exact for GPipe, and for every schedule when the last rank is
    the slowest (a decoder's: it holds the head and the loss); an upper bound for 1F1B and interleaving when an
    earlier one is (an encoder-decoder's encoder), still closer than stretching the slowest rank by the
    fraction."""
    if plan.pp == 1 or not other_ranks_s:
        return 0.0
    return bubble_fraction(plan) * sum(other_ranks_s) / len(other_ranks_s)


def p2p_buffer_bytes(plan: ParallelPlan, shape, micro_batch: int, width: int) -> float:
    """Receive buffers per local stage: one activation from the previous stage and one gradient from the
    next (`p2p_elements` each)."""
    if plan.pp == 1:
        return 0.0
    return 2 * plan.pp_virtual * p2p_elements(shape, micro_batch, plan.tp) * width
