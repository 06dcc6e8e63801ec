"""Training compute: FLOPs, petaFLOP/s-days, GPU-hours, wall-clock, cost and MFU.

Sources
- C ≈ 6·N·D (Kaplan et al. 2020, §2.1: 2N forward + 4N backward FLOPs per token).
- Model FLOPs per token with attention: 6N + 12·L·H·Q·T (Chowdhery et al. 2022, PaLM, App. B;
  L layers, H heads, Q head dim, T sequence length; H·Q is the hidden size). MFU = achieved model
  FLOP/s ÷ dense peak FLOP/s. Recomputation does not count toward MFU.
- Hardware FLOPs with recomputation (Korthikanti et al. 2022, §5): full recomputation adds a
  second forward, 8N + 16·L·H·Q·T per token; selective recomputation re-runs only the attention
  scores, 6N + 16·L·H·Q·T.
- 1 petaFLOP/s-day = 1e15 FLOP/s x 86,400 s = 8.64e19 FLOPs (Brown et al. 2020, App. D).
- Mixture of experts: N is the active parameters (`active_params`: each token's top-k routed experts, the
  shared experts and the router's h x E matmul, not the E - k experts it skips): Switch (Fedus et al. 2022)
  compares models at equal FLOPs per token counting only the experts a token is routed to, and Mixtral's
  "12.9B active" is this count; MFU is on that basis too. The attention term is the dense one (MoE replaces only the MLP).

Encoder-only (BERT) and encoder-decoder (T5) models, per position a sequence holds:
- encoder, masked language modelling: every position runs the whole model, the MLM head included
  (`transformers.BertForMaskedLM` computes the logits at every position; the loss then reads only the ~15%
  masked ones, which changes nothing of the matmuls). So PaLM's count holds as for a decoder: 6N + 12·L·H·Q·T,
  the attention term already the full (bidirectional) score matrix. The pooler and the next-sentence head
  (`encoder_head` pooler or pretraining) run on the first position only: 6·(h² + h + 2h + 2)/T per position.
- encoder-decoder, span corruption: a sequence is T_in input positions (`seq_len`, the encoder's) and T_tgt target
  positions (`ModelShape.n_target_len`: T5's 114 for 512 inputs at noise density 0.15, mean span 3, as
  t5.data.preprocessors.random_spans_helper computes; or --target-len). Per sequence, in PaLM's terms:
    - each input position: 6·(L_enc encoder blocks + L_dec x the cross-attention's K and V, which read the
      encoder's output: 2·h·kv each) + 12·L_enc·H·Q·T_in (encoder self-attention);
    - each target position: 6·(L_dec decoder blocks less the cross K and V, + the LM head V·h)
      + 12·L_dec·H·Q·T_tgt (causal self-attention, full-matrix as PaLM counts it) + 12·L_dec·H·Q·T_in (the
      cross-attention's scores and weighted sum over the T_in encoder positions);
  a "token" is one input position, as T5 counts them (2^35 pretraining tokens = 2^19 steps x 128 sequences x 512
  inputs) and as the planner's token counts do (`--tokens`, tokens per step = sequences x seq_len, emit's steps,
  the trainer's tokens_seen): FLOPs per token are the sequence's over T_in, the targets' work carried by the
  inputs (626 positions per 512 tokens at T5's lengths). The embedding lookups are not matmuls and are not counted
  (the decoder's 6N counts its embedding table, a convention).
  6N·D (`flops_6nd`) keeps N = every parameter.

One MFU basis everywhere (`MFU_BASIS`): model FLOPs with the attention term, as PaLM defines MFU
and as the trainer logs it. GPU-hours = model FLOPs / (peak x MFU), and `implied_mfu` inverts
exactly that, so a published run's GPU-hours go back through the planner unchanged. The same
utilisation on the 6ND basis (what "LLaMA-7B ran at 43%" means) is shown beside it: `mfu_6nd`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.core import checks
from planner.core.errors import PlannerError
from planner.core.units import PF_DAY_FLOPS
from planner.model.shapes import ModelShape

#: Chinchilla's compute-optimal rule of thumb (Hoffmann et al. 2022): about 20 tokens per parameter.
TOKENS_PER_PARAM = 20.0
#: What MFU divides by, in every input and output of the planner.
MFU_BASIS = "model FLOPs (6N + 12*L*H*Q*T per token, PaLM App. B; N active for MoE)"
#: Default MFU on that basis. Reported: PaLM 540B 46.2% (Chowdhery et al. 2022, Table 3); LLaMA-7B
#: 47% on this basis (43% on 6ND) implied by 82,432 A100-hours for 1T tokens at seq 2048 (Touvron et
#: al. 2023, Table 15); BloombergGPT ~24% of model FLOPs (Wu et al. 2023). 0.40 is a well-tuned
#: dense run; small clusters do better, first attempts worse.
DEFAULT_MFU = 0.40


def attention_flops_per_token(shape: ModelShape) -> float:
    """PaLM's attention term, 12·L·H·Q·T (full, non-causal score matrix, as PaLM and torchtitan); an
    encoder-decoder's per input token, its targets' included (module docstring)."""
    if shape.arch == "encoder-decoder":
        return encoder_decoder_flops(shape)[1]
    return 12 * shape.layers * shape.heads * shape.head_dim * shape.seq_len


def active_params(params: float, shape: ModelShape | None) -> float:
    """The N of 6N: `params`, less the routed experts each token skips in an MoE model (its shape's total
    less active count); an encoder's less its pooler and next-sentence head, which run once per sequence;
    an encoder-decoder's matmul weights per input token, its targets' included (module docstring)."""
    if shape is None:
        return params
    if shape.arch == "encoder-decoder":
        return encoder_decoder_flops(shape)[0] / 6
    if shape.arch == "encoder":
        once = shape.first_token_params()
        return params - once + once / shape.seq_len
    if shape.moe is None:
        return params
    return params - (shape.param_count() - shape.active_param_count())


def encoder_decoder_flops(shape: ModelShape) -> tuple[float, float]:
    """An encoder-decoder's (matmul, attention) model FLOPs per token: a sequence's over its T_in input positions
    (module docstring)."""
    s_in, s_tgt = shape.seq_len, shape.n_target_len
    h, hq, kv = shape.hidden, shape.q_dim, shape.n_kv_heads * shape.head_dim
    enc_block = shape.attention_params() + shape.mlp_params() + 2 * shape._norm_params()
    cross_kv = 2 * h * kv * shape.n_decoder_layers
    per_input = 6 * (shape.layers * enc_block + cross_kv)
    per_target = 6 * (shape.n_decoder_layers * shape.cross_block_params() - cross_kv + shape.vocab * h)
    attn_in = 12 * shape.layers * hq * s_in
    attn_tgt = 12 * shape.n_decoder_layers * hq * (s_tgt + s_in)
    return ((s_in * per_input + s_tgt * per_target) / s_in, (s_in * attn_in + s_tgt * attn_tgt) / s_in)


def capacity_padding_params(shape: ModelShape | None) -> float:
    """Expert weights per token that run on padding: with a capacity factor c, dispatch pads every expert's
    buffer to c x its mean share (GShard, Switch), so the experts' matmuls run c x top-k slots per token; the
    (c - 1) x top-k are hardware FLOPs, not model FLOPs. None dropless (an imbalance idles ranks, adds no work)."""
    m = shape.moe if shape is not None else None
    if m is None or m.capacity_factor is None:
        return 0.0
    return (m.capacity_factor - 1) * m.top_k * shape.expert_params() * shape.moe_layers


def model_flops_per_token(params: float, shape: ModelShape | None) -> float:
    return 6 * active_params(params, shape) + (attention_flops_per_token(shape) if shape else 0.0)


def recomputed_matmul_params(shape: ModelShape, checkpointing: str) -> float:
    """Per checkpointed layer, the matmul weights whose forward runs again in backward: all of them under
    full (those a token passes through, in an MoE layer its top-k experts); under op
    (`pretrain.activation_checkpointing`, which keeps the 1st, 3rd, ... matmul's output: q, v, gate, down) the
    others, k, o and up; none under selective or none."""
    if checkpointing == "full":
        return shape.active_matmul_params()
    if checkpointing == "op":
        kv = shape.n_kv_heads * shape.head_dim
        return shape.hidden * kv + shape.q_dim * shape.hidden + shape.hidden * shape.ffn
    return 0.0


def hardware_flops_per_token(params: float, shape: ModelShape | None, checkpointing: str,
                             checkpointed_fraction: float = 1.0) -> float:
    """What the GPUs execute per token: the model FLOPs and what checkpointing recomputes, on the fraction
    of the layers it checkpoints (full: the whole forward, 2N + attention; op: its recomputed matmuls;
    selective: attention's scores)."""
    if shape is not None and shape.arch == "encoder-decoder" and checkpointing != "none":
        raise PlannerError(f"--checkpointing {checkpointing}: recomputation of an encoder-decoder is not planned "
                           "yet; use none")
    attn = attention_flops_per_token(shape) / 12 if shape else 0.0  # one forward pass of attention / 4
    params = active_params(params, shape) + capacity_padding_params(shape)
    if checkpointing == "full":
        return 6 * params + 12 * attn + checkpointed_fraction * (2 * params + 4 * attn)
    if checkpointing == "selective":
        return 6 * params + 12 * attn + checkpointed_fraction * 4 * attn
    if checkpointing == "op" and shape is not None:
        return 6 * params + 12 * attn + checkpointed_fraction * 2 * shape.layers * recomputed_matmul_params(shape, "op")
    return 6 * params + 12 * attn


@dataclass(frozen=True)
class ComputeEstimate:
    tokens: float
    flops_6nd: float
    flops: float  # model FLOPs, 6N + attention, per PaLM (the MFU numerator)
    hardware_flops: float  # what the GPUs execute, recomputation included
    pf_days: float
    gpu_hours: float
    wall_days: float
    cost_usd: float
    mfu: float  # on MFU_BASIS
    mfu_6nd: float  # the same utilisation counted on 6ND (no attention term)
    peak_flops_per_gpu: float
    gpus: int
    tokens_per_second: float  # whole job, at the stated MFU
    gpu_days_per_pf_day: float  # GPU-days of this GPU at 100% of peak that make one PF/s-day

    def to_dict(self) -> dict:
        return {**self.__dict__, "mfu_basis": MFU_BASIS}


#: the lowest --mfu taken: 0.1% of peak is below any training run's, and a smaller one only overflows the days
MIN_MFU = 1e-3


def validate_mfu(mfu: float) -> float:
    if not (MIN_MFU <= mfu <= 1):
        raise PlannerError(f"--mfu: {mfu!r} must be between {MIN_MFU} and 1, e.g. 0.4 for 40% of dense peak")
    return mfu


def estimate_compute(params: float, tokens: float, shape: ModelShape | None, *, peak_flops: float,
                     gpus: int, mfu: float = DEFAULT_MFU, price_per_gpu_hour: float = 0.0,
                     checkpointing: str = "none", checkpointed_fraction: float = 1.0) -> ComputeEstimate:
    """Compute, time and cost of training `params` parameters on `tokens` tokens.

    GPU-hours use model FLOPs at the stated MFU (MFU is defined on model FLOPs, so
    recomputation's extra work shows up as a lower achievable MFU, not as more model FLOPs). A user's --mfu
    is checked to lie in (0, 1] where it is read; a predicted one may pass 1 on a small model, whose 6N counts
    the embedding lookups as FLOPs, on a machine priced at its measured rates (`planner probe`).
    """
    if not (mfu > 0 and math.isfinite(mfu)):
        raise PlannerError(f"MFU: {mfu!r} must be a positive number")
    if gpus < 1:
        raise PlannerError(f"--gpus: {gpus!r} must be a positive integer")
    flops = model_flops_per_token(params, shape) * tokens
    n = active_params(params, shape)
    achieved = peak_flops * mfu
    gpu_seconds = flops / achieved
    gpu_hours = gpu_seconds / 3600
    return ComputeEstimate(
        tokens=tokens,
        flops_6nd=6 * n * tokens,
        flops=flops,
        hardware_flops=hardware_flops_per_token(params, shape, checkpointing, checkpointed_fraction) * tokens,
        pf_days=flops / PF_DAY_FLOPS,
        gpu_hours=gpu_hours,
        wall_days=gpu_hours / gpus / 24,
        cost_usd=gpu_hours * price_per_gpu_hour,
        mfu=mfu,
        mfu_6nd=mfu * 6 * n / model_flops_per_token(params, shape),
        peak_flops_per_gpu=peak_flops,
        gpus=gpus,
        tokens_per_second=tokens / (gpu_seconds / gpus),
        gpu_days_per_pf_day=1e15 / peak_flops,
    )


def implied_mfu(flops: float, gpu_hours: float, peak_flops: float) -> float:
    """MFU a reported run achieved: its FLOPs over what its GPU-hours could do at peak.

    Give model FLOPs (`model_flops_per_token` x tokens) for the planner's basis; 6ND for the
    6ND basis. `estimate_compute` at the first gives back `gpu_hours` exactly.
    """
    return flops / (gpu_hours * 3600 * peak_flops)


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float, gpus: int = 1) -> float:
    """Measured MFU of a running job (the trainer's throughput monitor uses this)."""
    return tokens_per_second * flops_per_token / (peak_flops * gpus)


BUDGET_UNITS = ("flops", "pf_days", "gpu_hours", "days", "dollars")
#: Training budgets the planner accepts, in FLOPs, whatever unit they are given in. Below: the smallest
#: plan there is (1e5 parameters on 1e6 tokens is 6e11 FLOPs). Above: the largest published runs are a
#: few 1e25 (Llama 3.1 405B: 3.8e25 FLOPs, Dubey et al. 2024), so 1e30 is ~10^5 x today's largest run;
#: past it a law fitted below 1e24 is extrapolated beyond meaning and the plan is not a plan.
FLOPS_RANGE = (1e12, 1e30)


def budget_to_flops(unit: str, amount: float, *, peak_flops: float, mfu: float, gpus: int = 1,
                    price_per_gpu_hour: float = 0.0) -> float:
    """Model FLOPs a budget buys: FLOPs, PF/s-days, GPU-hours, wall-clock days on `gpus`, or dollars.

    Whatever the unit, the FLOPs it buys must lie in `FLOPS_RANGE`."""
    flag = f"--{unit.replace('_', '-')}"
    if not amount > 0:
        raise PlannerError(f"{flag}: {amount!r} must be a positive budget")
    validate_mfu(mfu)
    checks.integer("--gpus", gpus, 1, 1 << 24)
    per_gpu_hour = peak_flops * mfu * 3600
    if unit == "flops":
        return checks.number(flag, amount, *FLOPS_RANGE)
    if unit == "pf_days":
        flops = amount * PF_DAY_FLOPS
    elif unit == "gpu_hours":
        flops = amount * per_gpu_hour
    elif unit == "days":
        flops = amount * 24 * gpus * per_gpu_hour
    elif unit == "dollars":
        if not price_per_gpu_hour > 0:
            raise PlannerError("--dollars: needs a positive --price (USD per GPU-hour) or a GPU with a catalog price")
        flops = amount / price_per_gpu_hour * per_gpu_hour
    else:
        raise PlannerError(f"budget: unknown unit {unit!r}; use one of {', '.join(BUDGET_UNITS)}")
    lo, hi = FLOPS_RANGE
    if not lo <= flops <= hi:  # also refuses NaN and infinities
        raise PlannerError(f"{flag}: {amount!r} {'is' if unit == 'pf_days' else 'buys'} {flops:.3g} FLOPs; a budget "
                           f"must come to between {lo:g} and {hi:g} FLOPs")
    return flops


def restate_budget(flops: float, *, peak_flops: float, mfu: float, gpus: int, price_per_gpu_hour: float) -> dict:
    """The same budget in every unit."""
    gpu_hours = flops / (peak_flops * mfu * 3600)
    return {"flops": flops, "pf_days": flops / PF_DAY_FLOPS, "gpu_hours": gpu_hours,
            "days": gpu_hours / gpus / 24, "gpus": gpus, "dollars": gpu_hours * price_per_gpu_hour}
