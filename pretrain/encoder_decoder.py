"""An encoder-decoder transformer (T5, Raffel et al. 2020) trained by span corruption.

As Hugging Face's `T5ForConditionalGeneration` builds it, so its parameter count equals
`planner.model.shapes.ModelShape`'s for the same config (`arch: encoder-decoder`, checked by a test): one embedding
shared by both stacks (and, when tied, the LM head); `layers` encoder blocks (self-attention, MLP) and
`decoder_layers` decoder blocks (causal self-attention, cross-attention over the encoder's output, MLP), each
sub-layer pre-normed by T5's LayerNorm, an RMSNorm without bias (`pretrain.model.RMSNorm`), and a final norm per
stack; no biases; the MLP ReLU (`mlp: relu`, T5 v1.0) or gated-GeLU (`geglu`, T5 v1.1 / FLAN-T5).

Positions: T5's relative position bias, a buckets x heads table per stack shared by all its blocks (Hugging Face
keeps it in each stack's first block; the count is the same), bidirectional buckets in the encoder, causal ones in
the decoder, no bias in cross-attention. The buckets depend only on the two lengths, so they are computed once, as
the decoder's rotary tables are (non-persistent buffers), with the decoder's causal mask. Self-attention writes its
scores out (q·kᵀ + bias, softmax, ·v, as Hugging Face's T5 does): the bias needs its gradient, which SDPA's fused
kernels give on some devices only, so what a block keeps is the same on every device; cross-attention has no bias
and runs SDPA. Scores are scaled by 1/sqrt(head_dim) (T5 folds that factor into its initialisation instead); a
tied head's input is scaled by h^-1/2 as T5's is.

`forward(inputs, targets)`: teacher forcing, the decoder reads the targets shifted right behind
`decoder_start_id` (T5's pad) and the loss is cross-entropy over every target position. What the blocks keep for
backward is counted term by term in `planner.memory.activations` (`_encoder_decoder_terms`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from planner.core.schema import ModelConfig
from planner.model.shapes import shape_of
from pretrain.activation_checkpointing import checkpointed, run_block
from pretrain.encoder import init_parameters
from pretrain.model import RMSNorm, cross_entropy

#: T5's relative_attention_max_distance: positions further apart share the last bucket.
MAX_DISTANCE = 128


def relative_buckets(queries: int, keys: int, buckets: int, bidirectional: bool,
                     max_distance: int = MAX_DISTANCE) -> torch.Tensor:
    """(queries, keys) bucket of each key's offset from each query (Hugging Face's `_relative_position_bucket`):
    half the buckets exact offsets, the rest logarithmic up to `max_distance`; bidirectional buckets split the
    range between keys before and after the query, causal ones see only keys before it."""
    offset = torch.arange(keys)[None, :] - torch.arange(queries)[:, None]
    out = torch.zeros_like(offset)
    if bidirectional:
        buckets //= 2
        out += (offset > 0).long() * buckets
        offset = offset.abs()
    else:
        offset = -offset.clamp(max=0)
    exact = buckets // 2
    large = exact + (torch.log(offset.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                     * (buckets - exact)).long()
    return out + torch.where(offset < exact, offset, large.clamp(max=buckets - 1))


class Attention(nn.Module):
    """Multi-head attention without biases; K and V read `memory` (cross-attention) or `x` (self-attention)."""

    def __init__(self, hidden: int, heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.q = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k = nn.Linear(hidden, heads * head_dim, bias=False)
        self.v = nn.Linear(hidden, heads * head_dim, bias=False)
        self.o = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, memory: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention with the stack's relative position bias (`bias`, with -inf above the diagonal in the
        decoder), or cross-attention over `memory` without one."""
        b, s, _ = x.shape
        source = x if memory is None else memory
        q = self.q(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.k(source).view(b, source.shape[1], -1, self.head_dim).transpose(1, 2)
        v = self.v(source).view(b, source.shape[1], -1, self.head_dim).transpose(1, 2)
        if bias is None:  # cross-attention: no position bias, SDPA's fused kernel
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # the learned bias needs its gradient: the scores written out, as T5 computes them
            scores = q @ k.transpose(-2, -1) * self.head_dim ** -0.5 + bias
            y = torch.softmax(scores, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    """ReLU (two matrices, T5 v1.0) or gated-GeLU (three, T5 v1.1: gelu(gate)·up)."""

    def __init__(self, hidden: int, ffn: int, kind: str):
        super().__init__()
        self.gate = nn.Linear(hidden, ffn, bias=False) if kind == "geglu" else None
        self.up = nn.Linear(hidden, ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.down(F.relu(self.up(x)))
        return self.down(F.gelu(self.gate(x), approximate="tanh") * self.up(x))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, ffn: int, mlp: str, head_dim: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.attn = Attention(cfg.hidden, cfg.heads, head_dim)
        self.mlp_norm = RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.hidden, ffn, mlp)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), bias)
        return x + self.mlp(self.mlp_norm(x))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, ffn: int, mlp: str, head_dim: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.attn = Attention(cfg.hidden, cfg.heads, head_dim)
        self.cross_norm = RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.cross = Attention(cfg.hidden, cfg.heads, head_dim)
        self.mlp_norm = RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.hidden, ffn, mlp)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), bias)
        x = x + self.cross(self.cross_norm(x), None, memory)
        return x + self.mlp(self.mlp_norm(x))


class Stack(nn.Module):
    """One side's blocks (`blocks`: index in the stack -> block), its relative position bias table and its final
    norm; a pipeline stage's holds some of them (`bias`, `norm`)."""

    def __init__(self, blocks: dict[int, nn.Module], cfg: ModelConfig, buckets: int, bias: bool = True,
                 norm: bool = True):
        super().__init__()
        self.relative_bias = nn.Embedding(buckets, cfg.heads) if bias else None
        self.blocks = nn.ModuleDict({str(i): block for i, block in blocks.items()})
        self.norm = RMSNorm(cfg.hidden, eps=cfg.norm_eps) if norm else None


class EncoderDecoder(nn.Module):
    """T5ForConditionalGeneration: `forward(inputs, targets)` is the span-corruption loss; without targets, the
    encoder's output (the memory the decoder reads).

    A pipeline stage is the same module holding a slice of it (Megatron's T5 pipeline): the blocks `layers`,
    numbered over the encoder's blocks then the decoder's (block i of the decoder is layer `cfg.layers + i`), each
    named as in the whole model (`decoder.blocks.0...`). What one process computes once per micro-batch from the
    inputs sits on the first stage (`embedding`): the shared embedding of the inputs and of the shifted targets, and
    each stack's relative position bias for all its blocks; the stages carry those on, so every block reads the
    one bias its stack computed, and each table's gradient sums over all its blocks, as in one process. Stages in
    the encoder carry (hidden, encoder bias, embedded decoder inputs, decoder bias); the stage with the encoder's
    last block applies its final norm, and from there stages carry (decoder hidden, encoder output, decoder bias).
    The last stage (`head`) has the decoder's final norm and the head, and returns the logits."""

    def __init__(self, cfg: ModelConfig, activation_checkpointing: str = "none", seed: int = 0,
                 checkpoint_every: int = 1, layers: Iterable[int] | None = None, embedding: bool = True,
                 head: bool = True):
        super().__init__()
        shape = self.shape = shape_of(cfg)
        assert shape.arch == "encoder-decoder", shape.arch
        self.cfg, self.activation_checkpointing, self.checkpoint_every = cfg, activation_checkpointing, checkpoint_every
        n_enc = cfg.layers
        layers = list(range(n_enc + shape.n_decoder_layers) if layers is None else layers)
        block_args = (cfg, shape.ffn, shape.mlp, shape.head_dim)
        encoder = {i: EncoderBlock(*block_args) for i in layers if i < n_enc}
        decoder = {i - n_enc: DecoderBlock(*block_args) for i in layers if i >= n_enc}
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden) if embedding else None
        self.encoder = Stack(encoder, cfg, shape.relative_buckets, bias=embedding, norm=n_enc - 1 in encoder) \
            if encoder or embedding else None
        self.decoder = Stack(decoder, cfg, shape.relative_buckets, bias=embedding, norm=head) \
            if decoder or embedding else None
        self.head = None if cfg.tied_embeddings or not head else nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        self.has_head = head
        if embedding:  # the bias tables' buckets and the decoder's causal mask: where the biases are computed
            self.register_buffer("encoder_buckets", torch.empty(shape.seq_len, shape.seq_len, dtype=torch.long),
                                 persistent=False)
            self.register_buffer("decoder_buckets", torch.empty(shape.n_target_len, shape.n_target_len,
                                                                dtype=torch.long), persistent=False)
            self.register_buffer("future", torch.empty(shape.n_target_len, shape.n_target_len, dtype=torch.bool),
                                 persistent=False)  # the decoder's causal mask: keys after the query
        if not next(self.parameters()).is_meta:
            self.init_weights(seed)

    def init_weights(self, seed: int) -> None:
        layers = self.cfg.layers + self.shape.n_decoder_layers
        init_parameters(self, seed, self.cfg.init_std, layers)
        if self.embed is None:
            return
        s, t, n = self.shape.seq_len, self.shape.n_target_len, self.shape.relative_buckets
        self.encoder_buckets.copy_(relative_buckets(s, s, n, bidirectional=True))
        self.decoder_buckets.copy_(relative_buckets(t, t, n, bidirectional=False))
        self.future.copy_(torch.ones(t, t, dtype=torch.bool).triu(1))

    def _bias(self, stack: Stack, length: int, dtype: torch.dtype) -> torch.Tensor:
        """(1, heads, q, k) additive scores of the first `length` positions: the stack's bias for each offset's
        bucket, and in the decoder -inf above the diagonal (under TP, this rank's heads: `relative_bias` is split
        by heads)."""
        buckets = (self.decoder_buckets if stack is self.decoder else self.encoder_buckets)[:length, :length]
        bias = stack.relative_bias(buckets).permute(2, 0, 1).unsqueeze(0).to(dtype)
        if stack is self.decoder:
            bias = bias.masked_fill(self.future[:length, :length], float("-inf"))
        return bias.contiguous()  # laid out whole: a pipeline's first stage sends it on

    def _run(self, stack: Stack, x: torch.Tensor, offset: int, *args: torch.Tensor) -> torch.Tensor:
        for index, block in stack.blocks.items():
            policy = checkpointed(self.activation_checkpointing, self.checkpoint_every, offset + int(index)) \
                if self.training else "none"
            x = run_block(block, policy, x, *args)
        return x if stack.norm is None else stack.norm(x)  # the stack's final norm, where this stage has it

    def forward(self, *args: torch.Tensor | None):
        """The whole model: (inputs, targets) in, the loss out, or (inputs) in, the encoder's output out. A stage
        (class docstring): the first reads (inputs, targets), the others what the stage before carries; the last
        returns the logits, the others what they carry on."""
        targets = None
        if self.embed is not None:
            inputs, targets = args[0], args[1] if len(args) > 1 else None
            x = self.embed(inputs)
            carry = (x, self._bias(self.encoder, inputs.shape[1], x.dtype))
            if targets is not None:
                t = targets.shape[1]
                start = torch.full_like(targets[:, :1], self.cfg.decoder_start_id or 0)
                y = self.embed(torch.cat([start, targets[:, :-1]], dim=1))  # teacher forcing: targets shifted right
                carry += (y, self._bias(self.decoder, t, y.dtype))
        else:
            carry = args
        if len(carry) != 3:  # in the encoder: (hidden, encoder bias[, embedded decoder inputs, decoder bias])
            x, bias, *rest = carry
            x = self._run(self.encoder, x, 0, bias)
            if self.encoder.norm is None:  # the encoder goes on in the next stage
                return (x, bias, *rest)
            memory = x
            if not rest:
                return memory
            y, decoder_bias = rest
        else:  # in the decoder: (hidden, encoder output, decoder bias)
            y, memory, decoder_bias = carry
        if self.decoder is not None:
            y = self._run(self.decoder, y, self.cfg.layers, decoder_bias, memory)
        if not self.has_head:
            return y, memory, decoder_bias
        if self.head is None:  # T5 scales the tied head's input (its embedding is shared)
            logits = F.linear(y * self.cfg.hidden ** -0.5, self.embed.weight)
        else:
            logits = self.head(y)
        return logits if targets is None else cross_entropy(logits, targets)

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """The encoder's output (the whole model)."""
        return self(inputs)

    def stacks(self) -> list[Stack]:
        """The encoder's stack and the decoder's (each block an FSDP unit: `pretrain.engines.parallelize`); a
        stage's, those it has."""
        return [stack for stack in (self.encoder, self.decoder) if stack is not None]

    def aux_loss(self) -> None:
        return None

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
