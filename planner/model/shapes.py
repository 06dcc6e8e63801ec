"""Transformer shapes and their exact parameter counts, and a shape inferred from a count.

Named presets (paper tables, shipped Hugging Face configs) live in `planner.model.presets`.

The count follows the architecture term by term (no 12·L·h² shortcut), so that it equals what
`pretrain.model` builds (checked by a test) and what the papers report for the presets:

- embeddings: V·h, plus s·h for learned positions; LM head V·h unless tied;
- attention: Q and O are h×h, K and V are h×(kv_heads·head_dim) (grouped-query attention,
  Ainslie et al. 2023); biases add h + 2·kv·d + h;
- MLP: GELU is two h×f matrices (Vaswani et al. 2017), SwiGLU three (Shazeer 2020);
- norms: RMSNorm has a scale (h), LayerNorm a scale and a bias (2h); two per layer, one final,
  and one after the embedding where the model has it (BloombergGPT, BLOOM);
- mixture of experts (`MoE`; Shazeer et al. 2017, GShard, Switch, Mixtral): an MoE layer's MLP is a router
  (h x E, no bias), E routed experts of the MLP's kind at their own width, and any shared experts (DeepSeekMoE,
  Qwen-MoE; Qwen2-MoE also gates its shared expert with an h x 1 sigmoid); the first `dense_layers` layers
  keep a dense MLP (DeepSeek's first_k_dense_replace). `param_count()` is the total; `active_param_count()`
  what one token passes through (the top-k routed experts instead of all E; the router and shared experts
  always).

Encoder-only and encoder-decoder shapes (`arch`), counted as Hugging Face builds them:

- **encoder** (BERT, Devlin et al. 2019; HF `modeling_bert`): learned absolute positions (`max_positions`) and
  token types (`token_types`), a LayerNorm after the embedding sum, post-LN blocks (`post_norm`: each
  sub-layer's norm after its residual sum, so no final norm), biases, a GeLU MLP; on top `encoder_head`:
  `mlm` (BertForMaskedLM: the MLM transform h x h + h and a LayerNorm, the decoder tied to the word embedding
  unless `tied_embeddings` is off, and its own bias V; no pooler), `pooler` (BertModel: the pooler h x h + h, no
  head) or `pretraining` (BertForPreTraining: both, and the next-sentence head 2h + 2);
- **encoder-decoder** (T5, Raffel et al. 2020; HF `modeling_t5`): `layers` encoder blocks (attention, MLP) and
  `decoder_layers` decoder blocks (self-attention, cross-attention with K and V over the encoder's output, MLP),
  each sub-layer with a pre-norm, and a final norm per stack; T5's LayerNorm is an RMSNorm without bias (a
  scale, h); relative position bias (`position="relative"`): a buckets x heads table in the first block of each
  stack, shared by its other blocks; the MLP ReLU (`relu`, t5 v1.0, two matrices) or gated-GeLU (`geglu`,
  t5 v1.1 and flan-t5, three); one embedding shared by both stacks and, when tied, the LM head; no biases.
  `seq_len` is the encoder's input length and `target_len` the decoder's (`span_corruption_lengths`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from planner.core.errors import PlannerError
from planner.core.schema import ARCHS, MIN_SPAN_CORRUPTION_INPUTS

MLP_KINDS = ("swiglu", "gelu", "relu", "geglu")
#: MLPs with a gate: three matrices (SwiGLU, Shazeer 2020; T5 v1.1's gated-GeLU); the others have two.
GATED_MLPS = ("swiglu", "geglu")
NORM_KINDS = ("rmsnorm", "layernorm")
POSITION_KINDS = ("rope", "learned", "alibi", "relative")
ENCODER_HEADS = ("mlm", "pooler", "pretraining")


#: The busiest expert's load over the mean planned for under dropless routing. Dropless routing (Mixtral, OLMoE,
#: Qwen-MoE, DeepSeek-V3) sends an expert every token that picks it, so an EP rank's dispatched tokens, their
#: activations and its expert matmuls are set by the busiest expert, not the mean. 1.25 is the middle of the
#: capacity factors Switch Transformer trains with (Fedus et al. 2022, Table 1: 1.0, 1.25 and 2.0, with its
#: auxiliary balancing loss): the headroom over the mean that balanced routing is given. An assumption, not a
#: measurement of a dropless router's imbalance: a run with a capacity factor (`--capacity-factor`) is bounded
#: exactly by it instead.
DROPLESS_LOAD_FACTOR = 1.25
#: The longest sequence a shape takes: 16M tokens, past any published context (Llama 4 Scout's 10M)
MAX_SEQ_LEN = 1 << 24


@dataclass(frozen=True)
class MoE:
    """The mixture-of-experts part of a shape: every layer after the first `dense_layers` is an MoE layer.

    `capacity_factor`: None routes dropless (every token reaches its top-k experts, as Mixtral, OLMoE, Qwen-MoE
    and DeepSeek-V3 train); a number c gives each expert a buffer of c x its mean share of the tokens (GShard,
    Lepikhin et al. 2020; Switch, Fedus et al. 2022), padded, the overflow dropped."""

    experts: int  # routed experts per MoE layer (E)
    top_k: int  # routed experts per token
    expert_ffn: int  # one routed expert's MLP width
    shared_experts: int = 0  # experts every token passes through (DeepSeekMoE, Qwen-MoE)
    shared_ffn: int | None = None  # one shared expert's MLP width; None: expert_ffn
    dense_layers: int = 0  # leading layers with a dense MLP (DeepSeek's first_k_dense_replace)
    shared_gate: bool = False  # Qwen2-MoE's h x 1 sigmoid gate on the shared expert's output
    capacity_factor: float | None = None  # None: dropless
    #: the busiest EP rank's load over the mean when dropless: the margin, or exactly 1 where one rank holds every
    #: expert (ep 1: it runs k copies of each of its tokens however they spread; set by `resolve_model`)
    dropless_load: float = DROPLESS_LOAD_FACTOR

    def __post_init__(self) -> None:
        for name in ("experts", "top_k", "expert_ffn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise PlannerError(f"--{name.replace('_', '-')}: {value!r} must be a positive integer")
        if self.top_k > self.experts:
            raise PlannerError(f"--top-k: {self.top_k} is more than the {self.experts} experts (--experts)")
        for name in ("shared_experts", "dense_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PlannerError(f"--{name.replace('_', '-')}: {value!r} must be a whole number >= 0")
        if self.shared_ffn is not None and (not isinstance(self.shared_ffn, int) or self.shared_ffn <= 0):
            raise PlannerError(f"--shared-ffn: {self.shared_ffn!r} must be a positive integer")
        c = self.capacity_factor
        if c is not None and not (isinstance(c, int | float) and 1.0 <= c <= 64.0):
            raise PlannerError(f"--capacity-factor: {c!r} must be between 1 and 64 (e.g. 1.25, Switch's), "
                               "or left out for dropless routing")

    @property
    def shared_width(self) -> int:
        return self.shared_ffn or self.expert_ffn

    @property
    def load_factor(self) -> float:
        """Token copies the busiest EP rank processes over its mean share: the capacity factor (buffers padded to
        it), or when dropless `dropless_load` (`DROPLESS_LOAD_FACTOR` under expert parallelism, else 1)."""
        return self.capacity_factor or self.dropless_load


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    vocab: int
    seq_len: int
    kv_heads: int | None = None  # None: same as heads (multi-head attention)
    ffn_hidden: int | None = None  # None: 4h for GELU, 8h/3 rounded up to 256 for SwiGLU
    mlp: str = "swiglu"
    norm: str = "rmsnorm"
    position: str = "rope"
    tied_embeddings: bool = False
    bias: bool = False
    embedding_norm: bool = False
    head_dim_override: int | None = None  # None: hidden / heads (Gemma sets 256 with hidden 3072 or 3584)
    moe: MoE | None = None  # None: a dense model
    arch: str = "decoder"  # decoder | encoder | encoder-decoder (ARCHS)
    decoder_layers: int | None = None  # encoder-decoder: the decoder's blocks (None: as many as `layers`)
    target_len: int | None = None  # encoder-decoder: the decoder's sequence length (None: span corruption's)
    max_positions: int | None = None  # learned positions: the table's rows (None: seq_len)
    token_types: int = 0  # BERT's token-type (segment) embeddings
    post_norm: bool = False  # post-LN blocks (BERT): no final norm
    encoder_head: str = "mlm"  # encoder: what sits on the blocks (ENCODER_HEADS)
    relative_buckets: int = 32  # relative position bias: buckets per head (T5's relative_attention_num_buckets)

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "vocab", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise PlannerError(f"--{name.replace('_', '-')}: {value!r} must be a positive integer")
        if self.head_dim_override is not None and self.head_dim_override <= 0:
            raise PlannerError(f"--head-dim: {self.head_dim_override} must be a positive integer")
        if self.hidden % self.heads and self.head_dim_override is None:
            raise PlannerError(
                f"--heads: {self.heads} does not divide --hidden {self.hidden}; "
                f"valid head counts divide {self.hidden} (e.g. {_divisor_hint(self.hidden)})"
            )
        if self.kv_heads is not None and (self.kv_heads <= 0 or self.heads % self.kv_heads):
            raise PlannerError(f"--kv-heads: {self.kv_heads} must be positive and divide --heads {self.heads}")
        if self.ffn_hidden is not None and self.ffn_hidden <= 0:
            raise PlannerError(f"--ffn: {self.ffn_hidden} must be a positive integer")
        for name, allowed in (("mlp", MLP_KINDS), ("norm", NORM_KINDS), ("position", POSITION_KINDS),
                              ("arch", ARCHS), ("encoder_head", ENCODER_HEADS)):
            if getattr(self, name) not in allowed:
                raise PlannerError(f"--{name.replace('_', '-')}: {getattr(self, name)!r} is not one of "
                                   f"{', '.join(allowed)}")
        if self.seq_len > MAX_SEQ_LEN:
            raise PlannerError(f"--seq-len: {self.seq_len:,} must be at most {MAX_SEQ_LEN:,} tokens")
        self._check_arch()

    def _check_arch(self) -> None:
        """The encoder and encoder-decoder fields: positive where set, and only on their architecture."""
        for name in ("decoder_layers", "target_len", "max_positions", "relative_buckets"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise PlannerError(f"--{name.replace('_', '-')}: {value!r} must be a positive integer")
        if self.arch != "encoder-decoder" and (self.decoder_layers or self.target_len):
            raise PlannerError("--decoder-layers/--target-len: only an encoder-decoder (--arch encoder-decoder) "
                               "has a decoder stack apart from its encoder")
        if self.arch != "decoder" and self.moe is not None:
            raise PlannerError(f"--experts: mixture-of-experts layers are planned in decoders only, not --arch {self.arch}")
        if self.max_positions is not None and self.seq_len > self.max_positions:
            raise PlannerError(f"--seq-len: {self.seq_len} is longer than the model's {self.max_positions} "
                               "learned positions")

    @property
    def gated(self) -> bool:
        """The MLP has a gate (three matrices: SwiGLU, gated-GeLU) rather than two."""
        return self.mlp in GATED_MLPS

    @property
    def n_decoder_layers(self) -> int:
        """The decoder's blocks: an encoder-decoder's decoder stack, a decoder's `layers`, none in an encoder."""
        if self.arch == "encoder-decoder":
            return self.decoder_layers or self.layers
        return self.layers if self.arch == "decoder" else 0

    @property
    def n_blocks(self) -> int:
        """Every block, the encoder's then the decoder's in an encoder-decoder: what pipeline stages split."""
        return self.layers + self.n_decoder_layers if self.arch == "encoder-decoder" else self.layers

    @property
    def n_target_len(self) -> int:
        """The decoder's sequence length: an encoder-decoder's targets (`target_len`, or span corruption's for
        `seq_len` inputs), else `seq_len`."""
        if self.arch != "encoder-decoder":
            return self.seq_len
        return self.target_len or span_corruption_lengths(self.seq_len)[1]

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        """Width of the queries (and of the attention output): heads x head_dim, the hidden size unless
        the head size is set apart from it."""
        return self.heads * self.head_dim

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def ffn(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        if not self.gated:
            return 4 * self.hidden
        return 256 * math.ceil(8 * self.hidden / 3 / 256)  # LLaMA's rule (Touvron et al. 2023)

    def _norm_params(self) -> int:
        return self.hidden * (2 if self.norm == "layernorm" else 1)

    def attention_params(self) -> int:
        h, q, kv = self.hidden, self.q_dim, self.n_kv_heads * self.head_dim
        return 2 * h * q + 2 * h * kv + ((q + h + 2 * kv) if self.bias else 0)

    def mlp_params(self, ffn: int | None = None) -> int:
        """A dense MLP's parameters (the dense layers'), or one expert's at width `ffn`."""
        h, f = self.hidden, ffn or self.ffn
        if not self.gated:
            return 2 * h * f + ((f + h) if self.bias else 0)
        return 3 * h * f + ((2 * f + h) if self.bias else 0)

    # ---- mixture of experts ---------------------------------------------------------------------
    @property
    def moe_layers(self) -> int:
        """Layers whose MLP is a mixture of experts (0 for a dense model)."""
        return 0 if self.moe is None else max(0, self.layers - self.moe.dense_layers)

    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers

    def expert_params(self) -> int:
        """One routed expert (0 for a dense model)."""
        return 0 if self.moe is None else self.mlp_params(self.moe.expert_ffn)

    def moe_mlp_params(self, experts: int | None = None) -> int:
        """An MoE layer's MLP with `experts` routed experts (default all E): router h x E, the routed experts,
        the shared experts and Qwen2-MoE's shared gate."""
        m = self.moe
        if m is None:
            return self.mlp_params()
        routed = m.experts if experts is None else experts
        shared = m.shared_experts * self.mlp_params(m.shared_width) + (self.hidden if m.shared_gate else 0)
        return self.hidden * m.experts + routed * self.expert_params() + shared

    def routed_expert_params(self) -> int:
        """Every routed expert of every MoE layer: what expert parallelism splits."""
        return 0 if self.moe is None else self.moe_layers * self.moe.experts * self.expert_params()

    def cross_block_params(self) -> int:
        """An encoder-decoder's decoder block: self-attention, cross-attention (the same four matrices; K and V
        read the encoder's output) and the MLP, each with its norm."""
        return 2 * self.attention_params() + self.mlp_params() + 3 * self._norm_params()

    def layer_params(self, ep: int = 1) -> int:
        """One block's parameters: the MoE block where the model has one (its largest), with its routed experts
        split over `ep` expert-parallel ranks (what one rank holds and FSDP gathers); an encoder-decoder's
        decoder block (its largest)."""
        if self.arch == "encoder-decoder":
            return self.cross_block_params()
        if self.moe_layers == 0:  # dense (or a pipeline stage of an MoE model's dense layers only)
            return self.attention_params() + self.mlp_params() + 2 * self._norm_params()
        return self.attention_params() + self.moe_mlp_params(self.moe.experts // ep) + 2 * self._norm_params()

    def blocks_params(self) -> int:
        """Every block's parameters: the dense leading layers and the MoE layers."""
        dense = self.attention_params() + self.mlp_params() + 2 * self._norm_params()
        if self.arch == "encoder-decoder":
            return self.layers * dense + self.n_decoder_layers * self.cross_block_params()
        return self.dense_layers * dense + self.moe_layers * self.layer_params()

    def active_ffn(self) -> float:
        """MLP width one token passes through, averaged over the layers: the dense MLP's, or in an MoE layer its
        top-k experts' and the shared experts' together (what the MLP's element-wise work runs over)."""
        if self.moe is None:
            return self.ffn
        m = self.moe
        moe_width = m.top_k * m.expert_ffn + m.shared_experts * m.shared_width
        return (self.dense_layers * self.ffn + self.moe_layers * moe_width) / self.layers

    def active_matmul_params(self) -> int | float:
        """Matmul weights one token passes through in one layer, averaged over the layers: attention and the
        MLP, in an MoE layer the router, its top-k routed experts and the shared experts."""
        if self.moe is None:
            return self.attention_params() + self.mlp_params()
        mlp = self.dense_layers * self.mlp_params() + self.moe_layers * self.moe_mlp_params(self.moe.top_k)
        return self.attention_params() + mlp / self.layers

    @property
    def stacks(self) -> int:
        """Stacks of blocks: two in an encoder-decoder (each with its final norm and relative bias table)."""
        return 2 if self.arch == "encoder-decoder" else 1

    def position_params(self) -> int:
        """Learned positions (a `max_positions` x h table), token types (BERT), or the relative position bias
        (buckets x heads, in the first block of each stack, T5); none for RoPE or ALiBi."""
        types = self.token_types * self.hidden
        if self.position == "learned":
            return (self.max_positions or self.seq_len) * self.hidden + types
        if self.position == "relative":
            return self.stacks * self.relative_buckets * self.heads + types
        return types

    def embedding_params(self) -> int:
        return self.vocab * self.hidden + self.position_params()

    def pooler_params(self) -> int:
        """BERT's pooler (a dense h x h + h on the first token), where the encoder has one."""
        return self.hidden * self.hidden + self.hidden if self.encoder_head in ("pooler", "pretraining") else 0

    def first_token_params(self) -> int:
        """An encoder's weights that read the first position only: the pooler and the next-sentence head."""
        return self.pooler_params() + (2 * self.hidden + 2 if self.encoder_head == "pretraining" else 0)

    def head_params(self) -> int:
        """The output layer: a decoder's LM head (V x h unless tied); an encoder's `encoder_head` (the MLM head:
        transform h x h + h, its LayerNorm and the decoder's bias V, its weight V x h unless tied; the pooler; the
        next-sentence head 2h + 2)."""
        lm = 0 if self.tied_embeddings else self.vocab * self.hidden
        if self.arch != "encoder":
            return lm
        h = self.hidden
        mlm = lm + h * h + h + self._norm_params() + self.vocab if self.encoder_head != "pooler" else 0
        return mlm + self.first_token_params()

    def final_norms(self) -> int:
        """Norms outside the blocks: one after each stack (none after post-LN blocks), one after the embedding
        where the model has it."""
        return (0 if self.post_norm else self.stacks) + (1 if self.embedding_norm else 0)

    def param_count(self) -> int:
        """Every parameter (for an MoE model, every expert: the total)."""
        return (self.embedding_params() + self.final_norms() * self._norm_params() + self.blocks_params()
                + self.head_params())

    def active_param_count(self) -> int:
        """Parameters one token passes through: all of a dense model; an MoE model's top-k routed experts
        instead of all E (the embedding, attention, router and shared experts always)."""
        if self.moe is None:
            return self.param_count()
        return self.param_count() - self.moe_layers * (self.moe.experts - self.moe.top_k) * self.expert_params()

    def root_params(self) -> int:
        """Parameters outside the blocks: embedding, final norm, head (FSDP2's root module)."""
        return self.param_count() - self.blocks_params()

    def norm_params(self) -> int:
        """Parameters of every norm: what tensor parallelism replicates rather than splits."""
        head_norm = 1 if self.arch == "encoder" and self.encoder_head != "pooler" else 0  # the MLM transform's
        block_norms = 2 * self.layers + 3 * self.n_decoder_layers if self.arch == "encoder-decoder" else 2 * self.layers
        return (block_norms + self.final_norms() + head_norm) * self._norm_params()

    def params_per_tp_rank(self, tp: int = 1) -> float:
        """Parameters one tensor-parallel rank holds: every matrix split `tp` ways (Megatron column/row,
        the embedding and head by vocabulary), the norms replicated (sequence parallel keeps them whole), and an
        MoE layer's MLP whole (`tp_replicated_params`)."""
        whole = self.norm_params() + self.tp_replicated_params()
        return (self.param_count() - whole) / tp + whole

    def tp_replicated_params(self) -> int:
        """What tensor parallelism leaves whole on every TP rank besides the norms: the MoE layers' MLPs (router,
        routed and shared experts: our trainer runs TP for attention only there, every TP rank routes the whole
        sequence, `pretrain.engines.parallelize.apply_tensor_parallel`, experts split by EP instead); an encoder's
        MLM transform and row-parallel biases."""
        if self.arch == "encoder":  # BERT's MLM transform runs whole on the gathered sequence
            return self.layers * self.row_parallel_biases() + self.mlm_transform_params()
        return self.moe_layers * self.moe_mlp_params() if self.moe is not None else 0

    def row_parallel_biases(self) -> int:
        """A block's biases that tensor parallelism leaves whole: the row-parallel projections' (o and down, added
        after the reduction)."""
        return 2 * self.hidden if self.bias else 0

    def mlm_transform_params(self) -> int:
        """An encoder's MLM transform (dense h x h + h; its LayerNorm is among the norms)."""
        return self.hidden * self.hidden + self.hidden if self.arch == "encoder" and self.encoder_head != "pooler" \
            else 0

    def layer_params_per_tp_rank(self, ep: int = 1, tp: int = 1) -> float:
        """One block on a TP rank with its EP rank's experts (`layer_params`): attention split `tp` ways, an MoE
        layer's MLP whole."""
        if self.moe_layers == 0:
            return self.layer_params(ep) / tp
        moe = self.moe_mlp_params(self.moe.experts // ep)
        return (self.layer_params(ep) - moe) / tp + moe

    def non_embedding_params(self) -> int:
        """Kaplan et al. 2020's N: parameters outside the embedding and the LM head."""
        return self.param_count() - self.embedding_params() - self.head_params()

    def largest_layer_params(self) -> int:
        """Largest single module's parameters (what ZeRO-3 gathers at once: DeepSpeed's estimator input).

        DeepSpeed walks `model.modules()` and takes the biggest one's own parameters: the embedding
        (or untied head) matrix in most LLMs, else the biggest MLP projection.
        """
        h = self.hidden
        return max(self.vocab * h, self.ffn * h, h * self.q_dim, h * (self.moe.expert_ffn if self.moe else 0))

    def to_dict(self) -> dict:
        out = {**asdict(self), "ffn_hidden": self.ffn, "kv_heads": self.n_kv_heads}
        if self.moe is None:
            del out["moe"]  # a dense shape's dict is what it was before MoE
        if self.arch == "decoder":  # a decoder's dict is what it was before the other architectures
            for name in ARCH_FIELDS:
                if out[name] == ARCH_DEFAULTS[name]:
                    del out[name]
        else:
            out.update(decoder_layers=self.n_decoder_layers, target_len=self.n_target_len)
        return out


#: The fields the encoder and encoder-decoder added, and their defaults (a decoder's dict leaves them out).
ARCH_FIELDS = ("arch", "decoder_layers", "target_len", "max_positions", "token_types", "post_norm",
               "encoder_head", "relative_buckets")
ARCH_DEFAULTS = {f.name: f.default for f in fields(ModelShape) if f.name in ARCH_FIELDS}


#: T5's span corruption (Raffel et al. 2020, §3.1.4): 15% of the tokens dropped in spans of mean length 3.
NOISE_DENSITY, MEAN_SPAN = 0.15, 3.0


def span_corruption_counts(tokens: int, noise_density: float = NOISE_DENSITY,
                           mean_span: float = MEAN_SPAN) -> tuple[int, int]:
    """(noise tokens, noise spans) of `tokens` raw tokens, as t5.data.preprocessors.random_spans_noise_mask
    counts them: round(tokens x density) noise tokens, at least one and leaving one kept, in round(noise /
    mean_span) spans, at least one. The collator (`pretrain.data.objectives.span_corrupt`) draws exactly these."""
    noise = min(max(round(tokens * noise_density), 1), tokens - 1)
    return noise, max(round(noise / mean_span), 1)


def _span_lengths(tokens: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """Inputs and targets of `tokens` corrupted tokens: the kept tokens and a sentinel per span, and the noise
    tokens and a sentinel per span, each with its EOS (t5.data.preprocessors.random_spans_helper)."""
    noise, spans = span_corruption_counts(tokens, noise_density, mean_span)
    return tokens - noise + spans + 1, noise + spans + 1


def span_corruption_raw_length(inputs: int, noise_density: float = NOISE_DENSITY,
                               mean_span: float = MEAN_SPAN) -> int:
    """The raw tokens a row of span corruption takes so that its corrupted input is `inputs` tokens long: the
    longest whose input fits, as T5's `random_spans_helper` chooses it (512 inputs: 568 raw tokens). The planner
    and the collator both read it, so the shards' rows and the planned lengths agree."""
    if inputs < MIN_SPAN_CORRUPTION_INPUTS:
        raise PlannerError(f"--seq-len: {inputs} input tokens are too few for span corruption "
                           f"(at least {MIN_SPAN_CORRUPTION_INPUTS})")
    tokens = inputs
    while tokens > 2 and _span_lengths(tokens, noise_density, mean_span)[0] > inputs:
        tokens -= 1  # only short inputs, where the clamps to one noise token and one span add a token
    while _span_lengths(tokens + 1, noise_density, mean_span)[0] <= inputs:
        tokens += 1
    return tokens


def span_corruption_lengths(inputs: int, noise_density: float = NOISE_DENSITY,
                            mean_span: float = MEAN_SPAN) -> tuple[int, int]:
    """(input, target) lengths of span corruption whose inputs are `inputs` tokens long: the longest raw text
    whose corrupted input fits, as T5's `random_spans_helper` chooses it. 512 inputs: 568 raw tokens, 114
    targets (the T5 paper's and its codebase's figures)."""
    return _span_lengths(span_corruption_raw_length(inputs, noise_density, mean_span), noise_density, mean_span)


def _divisor_hint(n: int) -> str:
    return ", ".join(str(d) for d in (8, 16, 32, 64, 96, 128) if n % d == 0) or "1"


#: hidden / layers for inferred shapes: GPT-3 175B and LLaMA-7B are both at 128, and Kaplan et al.
#: 2020 (Fig. 5) found loss within a few percent over aspect ratios of roughly 20 to 200.
INFERRED_ASPECT = 128
INFERRED_HEAD_DIM = 128
INFERRED_VOCAB = 32000


#: Published layer x hidden tables the inferred shape snaps to (Touvron et al. 2023 Table 2; Touvron et
#: al. 2023b; Brown et al. 2020 Table 2.1): (name, layers, hidden, heads, kv_heads, ffn or None for 8h/3).
FAMILY_SHAPES = (
    ("llama-7b", 32, 4096, 32, None, 11008), ("llama-13b", 40, 5120, 40, None, 13824),
    ("llama-33b", 60, 6656, 52, None, 17920), ("llama-65b", 80, 8192, 64, None, 22016),
    ("llama2-70b", 80, 8192, 64, 8, 28672),
    ("gpt3-125m", 12, 768, 12, None, None), ("gpt3-350m", 24, 1024, 16, None, None),
    ("gpt3-760m", 24, 1536, 16, None, None), ("gpt3-1.3b", 24, 2048, 16, None, None),
    ("gpt3-2.7b", 32, 2560, 32, None, None), ("gpt3-13b", 40, 5120, 40, None, None),
    ("gpt3-175b", 96, 12288, 96, None, None),
)
#: How close (relative parameter count) a family shape must be for `--params` to snap to it.
SNAP_TOLERANCE = 0.05


def snap_to_family(params: float, seq_len: int = 2048, vocab: int = INFERRED_VOCAB) -> tuple[str, ModelShape] | None:
    """The published family shape (LLaMA-style block, `vocab`) closest to `params`, if within 5%."""
    best = None
    for name, layers, hidden, heads, kv, ffn in FAMILY_SHAPES:
        shape = ModelShape(layers, hidden, heads, vocab, seq_len, kv_heads=kv, ffn_hidden=ffn)
        error = abs(shape.param_count() / params - 1)
        if error <= SNAP_TOLERANCE and (best is None or error < best[0]):
            best = (error, name, shape)
    return None if best is None else (best[1], best[2])


def infer_shape(params: float, seq_len: int = 2048, vocab: int = INFERRED_VOCAB, tp: int = 1) -> ModelShape:
    """A LLaMA-style shape whose parameter count is close to `params`.

    Layers from N ≈ 12·L·h² with h = 128·L; hidden then solves 12·L·h² + 2·V·h = N. The head count
    is kept a multiple of 8 and of `tp` (so tensor parallelism can split the heads, and hidden sizes
    stay multiples of 512 or 1024), with head size 128 (64 below 2048 hidden): the hidden sizes
    either side of the exact one are tried, each with the layer count that best matches `params`;
    of those within 3% of `params` the one nearer hidden/layers = 128 wins, else the closer count. SwiGLU with the 8h/3 rule, untied embeddings. A published family
    shape within 5% wins first (`snap_to_family`): 7e9 gives LLaMA-7B's 32 x 4096, 70e9
    Llama-2-70B's 80 x 8192 with 8 kv heads. Only activations and the attention FLOP term use this
    shape: weights, gradients and optimizer states use `params` itself.
    """
    snapped = snap_to_family(params, seq_len, vocab)
    if snapped is not None and snapped[1].heads % tp == 0:
        return snapped[1]
    layers = max(1, round((params / (12 * INFERRED_ASPECT**2)) ** (1 / 3)))
    a, b = 12 * layers, 2 * vocab
    hidden_exact = (-b + math.sqrt(b * b + 4 * a * params)) / (2 * a)
    head_dim = INFERRED_HEAD_DIM if hidden_exact >= 2048 else 64
    step = head_dim * math.lcm(8, tp)
    candidates = []
    for hidden in {max(step, step * math.floor(hidden_exact / step)), step * math.ceil(hidden_exact / step)}:
        per_layer = ModelShape(1, hidden, hidden // head_dim, vocab, seq_len).layer_params()
        depth = max(1, round((params - 2 * vocab * hidden) / per_layer))
        shape = ModelShape(depth, hidden, hidden // head_dim, vocab, seq_len)
        candidates.append((abs(shape.param_count() / params - 1), abs(math.log(hidden / depth / INFERRED_ASPECT)),
                           shape))
    close = [c for c in candidates if c[0] <= 0.03]  # within 3%: the better aspect ratio wins
    return min(close, key=lambda c: c[1])[2] if close else min(candidates, key=lambda c: c[0])[2]


def shape_of(m) -> ModelShape:
    """The shape of a run config's `model:` section (`planner.core.schema.ModelConfig`): the block our
    trainer builds, so its parameter count equals `pretrain.model.Transformer`'s (checked by a test)."""
    arch = getattr(m, "arch", "decoder")
    if arch != "decoder":
        return _non_decoder_shape_of(m, arch)
    dense = ModelShape(m.layers, m.hidden, m.heads, m.vocab, m.seq_len, kv_heads=m.kv_heads, ffn_hidden=m.ffn_hidden,
                       tied_embeddings=m.tied_embeddings)
    if not getattr(m, "experts", 0):
        return dense
    moe = MoE(m.experts, m.top_k, m.expert_ffn or dense.ffn, shared_experts=m.shared_experts, shared_ffn=m.shared_ffn,
              dense_layers=m.dense_layers, capacity_factor=m.capacity_factor)
    return replace(dense, moe=moe)


def _non_decoder_shape_of(m, arch: str) -> ModelShape:
    """An encoder (`pretrain.encoder`: BERT's post-LN block, learned positions, the MLM head) or an
    encoder-decoder (`pretrain.encoder_decoder`: T5's pre-RMSNorm blocks, relative position bias, no biases)."""
    if arch == "encoder":
        return ModelShape(m.layers, m.hidden, m.heads, m.vocab, m.seq_len, ffn_hidden=m.ffn_hidden, mlp=m.mlp or "gelu",
                          norm="layernorm", position="learned", tied_embeddings=m.tied_embeddings, bias=True,
                          embedding_norm=True, arch=arch, max_positions=m.max_positions, token_types=m.token_types,
                          post_norm=True, encoder_head="mlm")
    return ModelShape(m.layers, m.hidden, m.heads, m.vocab, m.seq_len, ffn_hidden=m.ffn_hidden, mlp=m.mlp or "relu",
                      norm="rmsnorm", position="relative", tied_embeddings=m.tied_embeddings,
                      head_dim_override=m.head_dim, arch=arch, decoder_layers=m.decoder_layers,
                      relative_buckets=m.relative_buckets)  # the targets: span corruption's for seq_len
