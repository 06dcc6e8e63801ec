"""Activation memory: the bytes autograd keeps for backward, term by term, per architecture.

A term is one tensor that a layer saves for its backward pass, in bytes per token (one position
of one sequence: multiply by s·b). The terms are derived from what the model actually saves and
are checked against it: `tests/test_activations.py` counts the storages that
`torch.autograd.graph.saved_tensors_hooks` sees during one forward of `pretrain.model`.

Two architectures:

- **llama** (RMSNorm, SwiGLU with an f = 8h/3 FFN, RoPE, optional GQA, SDPA): our own
  `pretrain.model.Transformer`. Its terms, per layer and token, with a = activation width (2 for
  16-bit, 4 for fp32) and a_s the residual stream's width (4 under autocast, whose stream is fp32):
  - each RMSNorm (two per layer) keeps its input in its own dtype and the fp32 reciprocal RMS:
    a_s·h + 4 per norm (`pretrain.model.RMSNormFunction`, as fused kernels keep);
  - the attention input a·h (q, k and v share it); q after RoPE a·q (q = heads x head_dim, h
    unless a config sets the head size apart) and k, v a·kv each (kv = kv_heads x head_dim: SDPA
    shares the kv heads itself, `enable_gqa`, so GQA shrinks them);
  - SDPA's flash kernel keeps its output a·q and the fp32 log-sum-exp, 4 per head; without flash
    (the math backend) it keeps the probabilities instead, a per head per key position;
  - the output projection's input a·q (a copy: SDPA's output is transposed before it);
  - the MLP input a·h; gate and up outputs and their product: 3·a·f (`pretrain.model.SwiGLUProduct`
    recomputes SiLU in backward instead of keeping its output).
  In 16-bit with MHA this is 18h + 6f + 8 + 4·heads bytes per token: 34·h with the 8h/3 FFN, what
  Korthikanti et al. 2022 count for a GPT-3 block, and what the hooks measure. The block before it
  (nn.RMSNorm's composite fp32 copies, SiLU's output kept, k and v expanded to every head before
  SDPA) kept 30h + 8f + 8 + 4·heads: 52-54·h (`benchmarks/RESULTS.md`, "The leaner block").
- **gpt** (LayerNorm, a 4h GeLU MLP, dropout): Korthikanti et al. 2022, eq. 1, term by term
  (§4.1): attention 11·h + 5·heads·s (QKV input 2h, Q and K 4h, softmax 2·heads·s, its dropout
  mask heads·s, dropout output 2·heads·s, V 2h, projection input 2h, dropout mask h); MLP 19·h
  (input 2h, first linear 8h, GeLU 8h, dropout mask h); two LayerNorm inputs 4h: 34·h + 5·heads·s.

Encoder-only (BERT, `ModelShape.arch == "encoder"`): our `pretrain.encoder.Encoder` (post-LN blocks, LayerNorm,
biases, a GeLU MLP, SDPA without a mask; no dropout), counted by the hooks in `tests/test_objective_activations.py`.
A LayerNorm keeps its input and its mean and reciprocal standard deviation, two per token in the stream's width:
a_s·h + 2·a_s. Per layer and token:
  - the attention input a·h (under autocast q, k and v each cast their own: 3·a·h); SDPA's q, k, v and output,
    4·a·q, and its fp32 log-sum-exp 4·heads (no copy before the output projection: SDPA's CPU and CUDA kernels
    lay their output out (b, s, heads, d), so the transpose back is a view); without flash the probabilities
    a·heads·s instead of the output and log-sum-exp;
  - the first LayerNorm (after the residual sum) a_s·h + 2·a_s; the MLP input a·h (its output is the next
    LayerNorm's input); GeLU's input and output (the down projection's input), 2·a·f; the second LayerNorm
    a_s·h + 2·a_s, whose output is the next block's input.
  In 16-bit: 16·h + 4·f + 4·heads + 8 bytes per token, with f = 4h 32·h + 4·heads + 8, against Korthikanti's
  34·h + 5·heads·s for a GPT-3 block with dropout and without flash attention. An encoder of our decoder's block
  (RMSNorm, SwiGLU; `--arch encoder` with shape flags) keeps the **llama** terms: the mask changes nothing kept. Its output layer (`head_bytes`): the int64 token ids and labels (and token-type ids where the model
  has them), 8 each per token, and the position ids, 8 per position once; the embedding LayerNorm
  a_s·h + 2·a_s; the MLM head on every position (as `transformers.BertForMaskedLM`, which computes every
  position's logits): the transform's input a·h (a cast under autocast), its GeLU's input a·h, the head's
  LayerNorm input a·h and statistics 2·a_s, the decoder's input a·h, and the fp32 log-softmax 4·V.

Encoder-decoder (T5, `arch == "encoder-decoder"`): our `pretrain.encoder_decoder.EncoderDecoder`, counted by the
same hooks. An encoder layer keeps, per input token (s_in of them; s_tgt targets, `ModelShape.n_target_len`): the
two RMSNorms (a_s·h + 4 each, as the decoder's); the attention input a·h (3 casts under autocast); the self-
attention's scores are written out (the relative position bias needs its gradient): q and k a·q each (the matmul's
operands), the softmax's output a·heads·s_in (fp32 under autocast, which then keeps the 16-bit copy the next
matmul reads too: 6·heads·s_in), v a·q, and the output projection's input a·q (a copy: the transpose back is not a
view here); the MLP input a·h (two casts for gated-GeLU under autocast) and the MLP: ReLU's output a·f (the down
projection's input), or for gated-GeLU the gate's output, GeLU's output, up's output and their product, 4·a·f. A
decoder layer keeps the same per target token with s_tgt for s_in in the scores, and cross-attention: its norm
a_s·h + 4, the query's input a·h, SDPA's q and output a·q each and log-sum-exp 4·heads, no copy before the output
projection; and per input token its K and V, 2·a·q (under autocast also the two casts of the encoder's output,
2·a·h). The output layer: the input, decoder-input and target ids, 8 each per token of their side; each stack's
final norm (a_s·h + 4 per token of its side); the encoder's output once, a·h per input token (every decoder layer's
cross K and V read that one tensor; under autocast each casts its own, counted per layer); then as a decoder's
head, per target token: its input a·h and the fp32 log-softmax 4·V. The relative position buckets and the causal
mask are buffers, and the bias is looked up once per stack for all its blocks (nothing per layer or token).

Mixture of experts (`pretrain.model.MoE`, counted by the hooks in `tests/test_moe_train.py`): an MoE layer keeps
the dense block's terms but for the MLP's gate/up product (its input is the router's; under autocast the router's
cast, and the shared experts' two casts of their own), and instead, per token, the router's fp32 probabilities
(4·E: the softmax keeps its output), the top-k indices (int64) and weights (fp32), (8 + 4)·k; the permutation's
int64 indices, 2·8·k (the gather to the experts and the way back); the renormalised weights in the activations'
width and their fp32 normaliser, a·k + 4; the dispatched copies of the token, one per routed expert, a·h each
(the experts' input; under autocast two casts, gate's and up's); each routed expert's gate, up and product,
3·a·f_e; each expert's output a·h, which the combine keeps for the routing weights' gradient; and the shared
experts' 3·a·f_s each. Under expert parallelism the receiving rank's own permutation indices (2·8 per received
copy) are not counted (under 0.1% of a layer at h >= 1024). The
dispatched terms are for the busiest expert's load (`MoE.load_factor`: the capacity factor, to which dispatch
pads the buffers, or the dropless margin), so the per-GPU figure is the busiest EP rank's. The leading dense
layers keep the dense block's terms.

Precision regimes (how our engines run the model):
- `16bit`: the model's parameters are 16-bit (FSDP2's bf16 param_dtype, DeepSpeed bf16/fp16);
- `fp32`: everything in fp32 (a = 4);
- `autocast`: fp32 parameters under `torch.autocast(bf16)` (our single/DDP engine). Autocast casts
  every linear's input separately (q, k and v each keep their own 16-bit copy: 3·2h; gate and up
  2·2h) and keeps the 16-bit copy of every matrix it cast (not the norms' scales, which run in
  fp32): 2 bytes per attention and MLP parameter, and 2·V·h for the head, per micro-batch,
  independent of the token count.

Checkpointing (Korthikanti §5): `full` keeps only each layer's input (a_s·h) and, during backward,
one layer's activations while it is recomputed; `selective` recomputes the attention core, dropping
the per-head score terms (with flash attention there are none, so it saves nothing more for llama);
`op` is torchtitan's op-level policy (`pretrain.activation_checkpointing`): the layer's input a_s·h,
the outputs of every other matmul (q a·q, v a·kv, gate a·f, down a·h) and SDPA's output and
log-sum-exp (a·q + 4·heads); everything else is recomputed. Under TP t with sequence parallelism (DTensor, as
the trainer runs it) a rank keeps its shard of each: the input's s/t positions a_s·h/t; q, v, gate and SDPA's
output and log-sum-exp split by heads or features, /t; down's output whole, a·h (row-parallel's partial sum over
every position, before its reduce-scatter); and, as torchtitan's save list has it, the two reduce-scatters'
outputs (o's and down's, s/t positions each), 2·a·h/t; the two all-gathers (attention's and the MLP's inputs)
are recomputed. Measured on TP 2 and on PP 2 x TP 2 (`tests/test_op_checkpointing_parallel.py`): equal to the
byte but for the 4-byte loss and its weight; a pipeline stage counts its received input (its first layer's) and
not its output (`pretrain.engines.pipeline`).
With `every` = k > 1 (torchtitan's layer SAC) only every k-th layer is checkpointed, floor(L / k) of
them; the others keep everything.

Tensor parallelism t with sequence parallelism (Korthikanti §4.2.2): heads and the FFN split t
ways, and the norms run on s/t of the sequence. Under PyTorch's DTensor (`parallelize_module` with
`SequenceParallel`, what `pretrain` uses) the column-parallel linears keep their all-gathered
input, so the attention and MLP inputs stay whole (Megatron re-gathers them in backward and divides
them by t too: `megatron_sp=True`). Without sequence parallelism the norms and inputs are whole.

The output layer (`head_bytes_per_token`): the token ids (int64, 8), the final norm (a_s·h + 4), the
head's input a·h and the fp32 log-softmax of the logits, 4·V (the 16-bit logits themselves are not
kept; the loss upcasts them). Under TP the vocabulary splits t ways (the loss runs on vocabulary
shards, `loss_parallel`) and the final norm runs sequence-parallel on s/t positions; the head's
input is gathered whole. Measured on our 4-process TP 2 x FSDP 2 run: every per-layer term and the
head agree to the byte, except FSDP2's bf16 cast of the rotary tables each block receives
(2·s·head_dim bytes per layer, not modelled: < 0.5% at toy sizes, ~0.1% at LLaMA-7B).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.core.errors import PlannerError
from planner.model.shapes import ModelShape

REGIMES = ("16bit", "fp32", "autocast")
CHECKPOINTING = ("none", "selective", "op", "full")
#: fp32 bytes: norms compute in fp32, the log-sum-exp and the loss's log-softmax are fp32.
FP32 = 4
#: int64 token ids saved by the embedding lookup.
TOKEN_ID_BYTES = 8


@dataclass(frozen=True)
class Term:
    """One saved tensor: bytes per token of one layer (or, with `per_layer_fixed`, bytes per layer)."""

    name: str
    bytes: float
    per_layer_fixed: bool = False  # autocast's weight copies: do not scale with tokens
    per_input_token: bool = False  # an encoder-decoder's decoder layer: per encoder input token (cross K and V)


def architecture(shape: ModelShape) -> str:
    """llama for RMSNorm + SwiGLU decoders (our model), gpt for LayerNorm + GeLU ones (Korthikanti's); encoder and
    encoder-decoder for ours (module docstring). Refused where no terms are derived."""
    if shape.arch == "encoder-decoder":
        if shape.mlp not in ("relu", "geglu"):
            raise PlannerError(f"activations: an encoder-decoder's are planned with ReLU or gated-GeLU MLPs (T5's), "
                               f"not --mlp {shape.mlp}")
        return "encoder-decoder"
    if shape.arch == "encoder":
        if shape.mlp == "gelu" and shape.norm == "layernorm" and shape.post_norm:
            return "encoder"  # BERT's block, as our encoder builds it
        if shape.mlp != "swiglu":
            raise PlannerError("activations: an encoder's are planned for BERT's block (post-LN LayerNorm, GeLU) "
                               f"or our decoder's (RMSNorm, SwiGLU), not {shape.norm}/{shape.mlp}")
        return "llama"  # our decoder's block without its causal mask keeps the same tensors
    if shape.mlp not in ("swiglu", "gelu"):
        raise PlannerError(f"activations: planned for SwiGLU and GeLU MLPs, not --mlp {shape.mlp} (not derived yet)")
    return "gpt" if shape.mlp == "gelu" else "llama"


def _width(regime: str) -> int:
    if regime not in REGIMES:
        raise PlannerError(f"activation regime: {regime!r} is not one of {', '.join(REGIMES)}")
    return FP32 if regime == "fp32" else 2


def _stream_width(regime: str) -> int:
    """Bytes per element of the residual stream: fp32 under autocast (its weights and sums are fp32)."""
    return FP32 if regime in ("fp32", "autocast") else 2


def _norm_bytes(h: int, regime: str) -> float:
    """An RMSNorm keeps its input (the stream's width) and the fp32 reciprocal RMS."""
    return _stream_width(regime) * h + FP32


def _llama_terms(shape: ModelShape, regime: str, tp: int, sp: bool, flash: bool, megatron_sp: bool) -> list[Term]:
    h, f, heads, s, q = shape.hidden, shape.ffn, shape.heads, shape.seq_len, shape.q_dim
    kv = shape.n_kv_heads * shape.head_dim
    a = _width(regime)
    norm_split = tp if sp else 1
    input_split = tp if (sp and megatron_sp) else 1
    casts_attn, casts_mlp = (3, 2) if regime == "autocast" else (1, 1)
    terms = [
        Term("attn_norm", _norm_bytes(h, regime) / norm_split),
        Term("attn_input", casts_attn * a * h / input_split),
        Term("q_k_v_after_rope", a * (q + 2 * kv) / tp),
    ]
    if flash:
        terms.append(Term("sdpa_output_and_lse", (a * q + FP32 * heads) / tp))
    else:
        terms.append(Term("attention_probabilities", a * heads * s / tp))
    terms += [
        Term("out_proj_input", a * q / tp),
        Term("mlp_norm", _norm_bytes(h, regime) / norm_split),
        Term("mlp_input", _mlp_input_casts(shape, casts_mlp) * a * h / input_split),
        # an MoE layer runs whole on every TP rank (TP for attention only: `ModelShape.tp_replicated_params`)
        *(_moe_terms(shape, a, casts_mlp) if shape.moe else [Term("gate_up_product", 3 * a * f / tp)]),
    ]
    if regime == "autocast":
        # the norms' scales run in fp32, uncast; an MoE layer casts every expert it holds
        weights = shape.attention_params() + shape.moe_mlp_params()
        terms.append(Term("autocast_weight_copies", 2 * weights / tp, per_layer_fixed=True))
    return terms


def _mlp_input_casts(shape: ModelShape, casts_mlp: int) -> int:
    """Copies of the MLP's input kept: the dense MLP's (one, or under autocast gate's and up's casts); an MoE
    layer's router keeps one (its cast, under autocast), and under autocast its shared experts cast their own."""
    if shape.moe is None:
        return casts_mlp
    return 1 + (casts_mlp if casts_mlp > 1 and shape.moe.shared_experts else 0)


def _moe_terms(shape: ModelShape, a: int, casts: int = 1) -> list[Term]:
    """An MoE layer's MLP terms (module docstring), in place of the dense gate/up product; under TP every rank
    runs the whole layer on the whole sequence (TP for attention only), so none is split. `casts`: copies of each
    dispatched token the experts keep (autocast casts it for gate and for up)."""
    m, h = shape.moe, shape.hidden
    routed = m.top_k * m.load_factor  # dispatched copies per token on the busiest EP rank
    per_expert = 3 if shape.mlp == "swiglu" else 2  # gate, up, product (or the GeLU MLP's input and output)
    return [Term("router_probabilities", FP32 * m.experts),
            Term("topk_indices_and_weights", (TOKEN_ID_BYTES + FP32) * m.top_k),
            Term("dispatch_indices", 2 * TOKEN_ID_BYTES * m.top_k),
            Term("combine_weights", a * m.top_k + FP32),
            Term("dispatched_tokens", casts * routed * a * h),
            Term("expert_intermediates", routed * per_expert * a * m.expert_ffn),
            Term("expert_outputs_for_combine", routed * a * h),
            Term("shared_expert_intermediates", m.shared_experts * per_expert * a * m.shared_width)]


def _gpt_terms(shape: ModelShape, regime: str, tp: int, sp: bool, flash: bool) -> list[Term]:
    h, heads, s = shape.hidden, shape.heads, shape.seq_len
    scale = _width(regime) / 2  # Korthikanti's figures are 16-bit; fp32 doubles them
    replicated = tp if sp else 1  # LayerNorms, dropouts and linear inputs outside the TP region
    scores = 0.0 if flash else 5 * heads * s / tp
    return [
        Term("attention_linear", scale * (2 * h / replicated + 4 * h / tp + 2 * h / tp + 2 * h / tp)),
        Term("attention_dropout_mask", h / replicated),
        Term("attention_scores", scale * scores),
        Term("mlp_linear_gelu", scale * (2 * h / replicated + 16 * h / tp)),
        Term("mlp_dropout_mask", h / replicated),
        Term("layernorm_inputs", scale * 4 * h / replicated),
    ]


def _layernorm_bytes(h: int, regime: str) -> float:
    """A LayerNorm keeps its input and its mean and reciprocal standard deviation, in the stream's width."""
    return _stream_width(regime) * (h + 2)


def _encoder_terms(shape: ModelShape, regime: str, flash: bool, tp: int = 1) -> list[Term]:
    """A block of our BERT-style encoder (`pretrain.encoder.EncoderBlock`), per token (module docstring); under TP
    the heads and the FFN split t ways, the LayerNorms on s/t positions, the linears' gathered inputs whole."""
    h, f, heads, s, q = shape.hidden, shape.ffn, shape.heads, shape.seq_len, shape.q_dim
    a, autocast = _width(regime), regime == "autocast"
    terms = [Term("attn_input", (3 if autocast else 1) * a * h), Term("q_k_v", 3 * a * q / tp),
             Term("sdpa_output_and_lse", (a * q + FP32 * heads) / tp) if flash else
             Term("attention_probabilities", a * heads * s / tp),
             Term("attn_layernorm", _layernorm_bytes(h, regime) / tp), Term("mlp_input", a * h),
             Term("gelu_input_and_output", 2 * a * f / tp), Term("mlp_layernorm", _layernorm_bytes(h, regime) / tp)]
    if autocast:  # 16-bit copies of the matrices (biases are not kept)
        weights = 2 * h * q + 2 * h * shape.n_kv_heads * shape.head_dim + 2 * h * f
        terms.append(Term("autocast_weight_copies", 2 * weights / tp, per_layer_fixed=True))
    return terms


def _encoder_decoder_terms(shape: ModelShape, regime: str, side: str, tp: int = 1) -> list[Term]:
    """A layer of our T5-style encoder-decoder (`pretrain.encoder_decoder`), `side` encoder (per input token) or
    decoder (per target token, its cross-attention's K and V per input token), module docstring. Under TP the heads
    and the FFN split t ways, the norms on s/t positions, the linears' gathered inputs whole: each cross-attention
    gathers the encoder's output for its K and V and keeps that copy, a·h per input token."""
    h, f, heads, q = shape.hidden, shape.ffn, shape.heads, shape.q_dim
    a, autocast = _width(regime), regime == "autocast"
    keys = shape.seq_len if side == "encoder" else shape.n_target_len
    probabilities = (FP32 + 2) * heads * keys if autocast else a * heads * keys
    mlp_casts = (2 if shape.gated else 1) if autocast else 1
    norm = _norm_bytes(h, regime) / tp
    terms = [Term("attn_norm", norm), Term("attn_input", (3 if autocast else 1) * a * h),
             Term("q_and_k", 2 * a * q / tp), Term("attention_probabilities", probabilities / tp),
             Term("v", a * q / tp), Term("out_proj_input", a * q / tp)]
    if side == "decoder":
        memory = 2 * a * h if autocast else a * h if tp > 1 else 0  # the casts, or TP's gathered copy
        terms += [Term("cross_norm", norm), Term("cross_query_input", a * h),
                  Term("cross_q_output_and_lse", (2 * a * q + FP32 * heads) / tp),
                  Term("cross_k_v", 2 * a * q / tp + memory, per_input_token=True)]
    terms += [Term("mlp_norm", norm), Term("mlp_input", mlp_casts * a * h),
              Term("mlp_intermediates", (4 if shape.gated else 1) * a * f / tp)]
    if autocast:
        attention = shape.attention_params() * (2 if side == "decoder" else 1)
        terms.append(Term("autocast_weight_copies", 2 * (attention + shape.mlp_params()) / tp, per_layer_fixed=True))
    return terms


def op_policy_planned(shape: ModelShape) -> bool:
    """Whether `--checkpointing op` is planned for this block: our dense LLaMA block only (`_op_terms`)."""
    return shape.moe is None and architecture(shape) == "llama"


def _op_terms(shape: ModelShape, regime: str, tp: int, sp: bool) -> list[Term]:
    """What torchtitan's op policy keeps of our dense block (module docstring), under TP t of it per rank: the
    column-parallel outputs (q, v, gate) and SDPA's are split t ways; down's output is row-parallel's partial sum
    over the whole sequence (not split); with sequence parallelism the layer's input is a sequence shard and the
    two reduce-scatters' outputs (o's and down's, s/t positions each) are kept, the all-gathers recomputed."""
    if shape.moe is not None:
        raise PlannerError("--checkpointing op: planned for our dense LLaMA block, not an MoE layer "
                           "(use full or none here)")
    if architecture(shape) != "llama":
        raise PlannerError("--checkpointing op: planned for our LLaMA block (use full or none here)")
    h, f, q, kv, a = shape.hidden, shape.ffn, shape.q_dim, shape.n_kv_heads * shape.head_dim, _width(regime)
    seq_split = tp if sp else 1
    terms = [Term("layer_input", _stream_width(regime) * h / seq_split), Term("q_and_v_outputs", a * (q + kv) / tp),
             Term("sdpa_output_and_lse", (a * q + FP32 * shape.heads) / tp), Term("gate_output", a * f / tp),
             Term("down_output", a * h)]
    if tp > 1 and sp:
        terms.append(Term("reduce_scatter_outputs", 2 * a * h / tp))
    return terms


def layer_terms(shape: ModelShape, *, regime: str = "16bit", checkpointing: str = "none", tp: int = 1,
                sequence_parallel: bool = False, flash_attention: bool = True,
                megatron_sp: bool = False, side: str = "encoder") -> list[Term]:
    """The tensors one layer keeps for backward (see the module docstring for each term); an encoder-decoder's
    encoder layer, or with `side="decoder"` its decoder layer."""
    if checkpointing not in CHECKPOINTING:
        raise PlannerError(f"--checkpointing: {checkpointing!r} is not one of {', '.join(CHECKPOINTING)}")
    kind = architecture(shape)  # refuses the architectures with no terms derived
    if kind in ("encoder", "encoder-decoder"):
        if checkpointing != "none":
            raise PlannerError(f"--checkpointing {checkpointing}: planned (and trained) for decoders only; an {kind} "
                               "runs without recomputation")
        if kind == "encoder":
            return _encoder_terms(shape, regime, flash_attention, tp)
        return _encoder_decoder_terms(shape, regime, side, tp)
    if checkpointing == "full":
        return [Term("layer_input", _stream_width(regime) * shape.hidden / (tp if sequence_parallel else 1))]
    if checkpointing == "op":
        return _op_terms(shape, regime, tp, sequence_parallel)
    flash = flash_attention or checkpointing == "selective"
    if kind == "gpt":
        return _gpt_terms(shape, regime, tp, sequence_parallel, flash)
    return _llama_terms(shape, regime, tp, sequence_parallel, flash, megatron_sp)


def _sum(terms: list[Term], tokens: float, input_tokens: float = 0.0) -> float:
    return sum(t.bytes if t.per_layer_fixed else t.bytes * (input_tokens if t.per_input_token else tokens)
               for t in terms)


def per_layer_bytes(shape: ModelShape, micro_batch: int, side: str = "encoder", **kw) -> float:
    """Bytes one layer keeps for backward for a micro-batch of `micro_batch` sequences (an encoder-decoder's
    encoder layer, or its decoder layer with `side="decoder"`)."""
    terms = layer_terms(shape, side=side, **kw)
    if shape.arch == "encoder-decoder" and side == "decoder":
        return _sum(terms, shape.n_target_len * micro_batch, shape.seq_len * micro_batch)
    return _sum(terms, shape.seq_len * micro_batch)


def checkpointed_layers(layers: int, checkpointing: str, every: int = 1, indices: tuple[int, ...] = ()) -> int:
    """Layers that run under the policy: every `every`-th one (all with every = 1), none without one. `indices`:
    the model-wide (0-based) indices of the layers counted, where they are not the whole model's (a pipeline
    rank's), whose 1-based index is a multiple of `every` (as the trainer picks them)."""
    if checkpointing == "none":
        return 0
    return sum((i + 1) % every == 0 for i in indices) if indices else layers // every


def checkpointed_fraction(layers: int, checkpointing: str, every: int = 1) -> float:
    """The share of the layers that recompute in backward (what the step time pays for)."""
    return checkpointed_layers(layers, checkpointing, every) / layers


def mean_layer_bytes(shape: ModelShape, micro_batch: int, **kw) -> float:
    """`per_layer_bytes` averaged over the layers: an MoE model's leading dense layers keep the dense block's."""
    if shape.moe is None or shape.dense_layers == 0:
        return per_layer_bytes(shape, micro_batch, **kw)
    dense = replace(shape, moe=None)
    return (shape.moe_layers * per_layer_bytes(shape, micro_batch, **kw)
            + shape.dense_layers * per_layer_bytes(dense, micro_batch, **kw)) / shape.layers


def stored_bytes(shape: ModelShape, micro_batch: int, checkpointing: str = "none", every: int = 1, share=None,
                 **kw) -> float:
    """All layers' saved activations (the output layer is `head_bytes`): the checkpointed layers' and the others';
    an encoder-decoder's encoder and decoder layers (`share`: of one pipeline rank, `planner.memory.pipeline.StageShare`,
    its blocks of each, and its layers' model-wide indices, which `every`-k checkpointing picks by; other
    architectures' stages are their `stage_shape`)."""
    if shape.arch == "encoder-decoder":
        sides = (shape.layers, shape.n_decoder_layers) if share is None else \
            (share.layers - share.decoder_layers, share.decoder_layers)
        return sum(n * per_layer_bytes(shape, micro_batch, side, checkpointing=checkpointing, **kw)
                   for n, side in zip(sides, ("encoder", "decoder"), strict=True) if n)
    n = checkpointed_layers(shape.layers, checkpointing, every, share.layer_indices if share else ())
    return n * mean_layer_bytes(shape, micro_batch, checkpointing=checkpointing, **kw) \
        + (shape.layers - n) * mean_layer_bytes(shape, micro_batch, **kw)


def recompute_bytes(shape: ModelShape, micro_batch: int, checkpointing: str = "none", every: int = 1,
                    indices: tuple[int, ...] = (), **kw) -> float:
    """While a checkpointed layer is recomputed in backward, it holds again what it did not keep."""
    if checkpointed_layers(shape.layers, checkpointing, every, indices) == 0:
        return 0.0
    full = per_layer_bytes(shape, micro_batch, checkpointing="none", **kw)
    if checkpointing in ("selective", "op"):
        return max(0.0, full - per_layer_bytes(shape, micro_batch, checkpointing=checkpointing, **kw))
    return full


def head_bytes_per_token(shape: ModelShape, regime: str = "16bit", tp: int = 1) -> float:
    """Token ids, final norm (sequence-parallel under TP), the head's input and the fp32 log-softmax over
    the vocabulary (split by TP); an encoder-decoder's per target token (its encoder side: `head_bytes`)."""
    a = _width(regime)
    if shape.arch == "encoder":
        return sum(_encoder_head_bytes_per_token(shape, regime, tp))
    if shape.arch == "encoder-decoder":  # decoder input and target ids, the final norm, the head's input, softmax
        return 2 * TOKEN_ID_BYTES + _norm_bytes(shape.hidden, regime) / tp + a * shape.hidden + FP32 * shape.vocab / tp
    if architecture(shape) == "gpt":  # LayerNorm input and the head input, then the fp32 softmax
        return TOKEN_ID_BYTES + (2 * a * shape.hidden) + FP32 * shape.vocab / tp
    return TOKEN_ID_BYTES + _norm_bytes(shape.hidden, regime) / tp + a * shape.hidden + FP32 * shape.vocab / tp


def _encoder_head_bytes_per_token(shape: ModelShape, regime: str, tp: int) -> tuple[float, float]:
    """An encoder's (inputs, output) per position (module docstring): the ids and the embedding LayerNorm (on s/t
    positions under TP); the labels, the MLM head (whole on each TP rank: it runs on the gathered sequence) and the
    log-softmax (split by vocabulary under TP)."""
    if shape.encoder_head == "pooler":
        raise PlannerError("activations: an encoder without its MLM head (BertModel) has no pretraining loss to "
                           "plan; plan BertForMaskedLM (architectures in the config)")
    a, h = _width(regime), shape.hidden
    ids = TOKEN_ID_BYTES * (2 if shape.token_types else 1)  # tokens (and token types)
    embedding = _layernorm_bytes(h, regime) / tp if shape.embedding_norm else 0.0
    final = 0.0 if shape.post_norm else _norm_bytes(h, regime)
    mlm = 4 * a * h + 2 * _stream_width(regime)  # transform input, GeLU input, LayerNorm input and statistics, decoder input
    return ids + embedding, TOKEN_ID_BYTES + final + mlm + FP32 * shape.vocab / tp


def loss_positions(shape: ModelShape) -> int:
    """Positions the loss's logits cover per sequence: an encoder-decoder's targets, else every position."""
    return shape.n_target_len if shape.arch == "encoder-decoder" else shape.seq_len


def loss_backward_bytes_per_token(shape: ModelShape, tp: int = 1) -> float:
    """At the start of backward (the memory peak), the fp32 gradient of the log-probabilities and the
    fp32 gradient of the logits are both alive: 2 x 4·V per token (measured by FSDPMemTracker as
    "Temp" at the peak, `planner verify`). Under TP the loss runs on vocabulary shards (`loss_parallel`),
    whose fused backward (torch/distributed/tensor/parallel/loss.py, `_nll_loss_and_log_softmax_backward`)
    returns `(grad_input + exp(x)) * grad_output`: three 4·V/tp tensors alive at once (measured the same way)."""
    return (3 if tp > 1 else 2) * FP32 * shape.vocab / tp


def head_fixed_bytes(shape: ModelShape, regime: str = "16bit", tp: int = 1) -> float:
    """Autocast's 16-bit copy of the output matrix (the head, or the tied embedding), per micro-batch; an encoder's
    MLM transform (h x h) too."""
    if regime != "autocast":
        return 0.0
    transform = shape.hidden ** 2 if shape.arch == "encoder" and shape.encoder_head != "pooler" else 0
    return 2 * (shape.vocab * shape.hidden / tp + transform)


def head_bytes(shape: ModelShape, micro_batch: int, regime: str = "16bit", tp: int = 1, share=None) -> float:
    """The output layer's saved tensors for a micro-batch (its fixed part included); an encoder's inputs too (ids,
    position ids once per position, the embedding LayerNorm); an encoder-decoder's input side (input and decoder
    input ids, the encoder's final norm and output). `share`: one pipeline rank's part (`StageShare`): the inputs'
    on the first stage, the loss's on the last, an encoder-decoder's final encoder norm on the stage of the
    encoder's last block and its output on each local stage of decoder blocks (each receives its own copy); a
    decoder's are all counted on the last stage."""
    first, last = (True, True) if share is None else (share.embedding, share.head)
    b, s = micro_batch, shape.seq_len
    if shape.arch == "encoder":
        inputs, output = _encoder_head_bytes_per_token(shape, regime, tp)
        return ((inputs * s * b + TOKEN_ID_BYTES * s) if first else 0.0) \
            + ((output * s * b + head_fixed_bytes(shape, regime, tp)) if last else 0.0)
    if shape.arch == "encoder-decoder":
        a, h, t = _width(regime), shape.hidden, shape.n_target_len
        out = (TOKEN_ID_BYTES * (s + t) * b) if first else 0.0  # input and decoder-input ids
        if share is None or share.encoder_end:
            out += _norm_bytes(h, regime) / tp * s * b
        # the encoder's output, once per stage its decoder blocks read it in (autocast: each layer casts its own;
        # TP: each layer gathers its own, counted per layer)
        memory = 0 if regime == "autocast" or tp > 1 else a * h
        out += memory * s * b * (1 if share is None else share.decoder_stages)
        if last:  # target ids, the decoder's final norm, the head's input and the log-softmax
            per_target = TOKEN_ID_BYTES + _norm_bytes(h, regime) / tp + a * h + FP32 * shape.vocab / tp
            out += per_target * t * b + head_fixed_bytes(shape, regime, tp)
        return out
    if not last:
        return 0.0
    tokens = loss_positions(shape) * micro_batch
    return head_bytes_per_token(shape, regime, tp) * tokens + head_fixed_bytes(shape, regime, tp)


def regime_for(precision: str, engine: str) -> str:
    """How our engines run the model: torch DDP/single autocasts over fp32 weights (bf16/fp16
    mixed), FSDP2 and DeepSpeed cast the parameters themselves to 16-bit."""
    if precision == "fp32":
        return "fp32"
    if engine in ("single", "ddp") and precision in ("bf16-mixed", "fp16-mixed"):
        return "autocast"
    return "16bit"
