"""An encoder-only transformer (BERT, Devlin et al. 2019) trained by masked language modelling.

As Hugging Face's `BertForMaskedLM` builds it, so its parameter count equals `planner.model.shapes.ModelShape`'s
for the same config (`arch: encoder`, checked by a test): learned absolute positions (`max_positions` rows) and,
optionally, token types; the embeddings' sum through a LayerNorm; post-LN blocks (each sub-layer's LayerNorm after
its residual sum, so no final norm), biases everywhere, a GeLU MLP, bidirectional attention (SDPA); on top the MLM
head: a dense h x h transform, GeLU and a LayerNorm, then the decoder onto the vocabulary, tied to the word
embedding unless `tied_embeddings` is off, with its own bias. No dropout (the decoder has none either), no pooler.

The loss is cross-entropy over the masked positions only (`labels` -100 elsewhere, `pretrain.objectives`). What a
block keeps for backward is counted term by term in `planner.memory.activations` (`_encoder_terms`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from planner.core.schema import ModelConfig
from planner.model.shapes import shape_of
from pretrain.activation_checkpointing import checkpointed, run_block

#: The label the loss skips: positions that were not masked (PyTorch's and Hugging Face's convention).
IGNORE_INDEX = -100


def init_parameters(model: nn.Module, seed: int, std: float, layers: int,
                    residual: tuple[str, ...] = ("o.weight", "down.weight")) -> None:
    """Every weight drawn from its own generator (the seed and its name, as `pretrain.model.Transformer` draws
    them, so a shard built on the meta device holds what the whole model holds): matrices normal(0, std), the
    projections into the residual stream (`residual`) scaled by 1/sqrt(2 layers) (GPT-2), biases zero, norm
    scales one."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    from pretrain.model import _generator

    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if isinstance(p.data, DTensor) else p.data
            if p.dim() >= 2:
                scale = (2 * layers) ** -0.5 if name.endswith(residual) else 1.0
                full = torch.empty(p.shape, device=local.device).normal_(
                    0.0, std * scale, generator=_generator(seed, name, local.device))
            elif name.endswith("bias"):
                full = torch.zeros(p.shape, device=local.device)
            else:
                full = torch.ones(p.shape, device=local.device)
            if isinstance(p.data, DTensor):
                full = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
            local.copy_(full)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in fp32 over the positions whose label is not IGNORE_INDEX (the masked ones)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX)


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention with biases (BERT's)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.head_dim = hidden // heads
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (proj(x).view(b, s, -1, self.head_dim).transpose(1, 2) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, s, -1))


class GeluMLP(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.up = nn.Linear(hidden, ffn)
        self.down = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class EncoderBlock(nn.Module):
    """A post-LN block: x = LN(x + attention(x)); x = LN(x + MLP(x))."""

    def __init__(self, hidden: int, heads: int, ffn: int, eps: float):
        super().__init__()
        self.attn = SelfAttention(hidden, heads)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.mlp = GeluMLP(hidden, ffn)
        self.mlp_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x))
        return self.mlp_norm(x + self.mlp(x))


class Encoder(nn.Module):
    """BertForMaskedLM: `forward(tokens, labels)` is the MLM loss; without labels, every position's logits.

    A pipeline stage is the same module holding a slice of it, as the decoder's (`pretrain.model.Transformer`):
    the blocks `layers` (named by their index in the whole model), the embeddings and their LayerNorm on the
    first stage (`embedding`), the MLM head on the last (`head`)."""

    def __init__(self, cfg: ModelConfig, activation_checkpointing: str = "none", seed: int = 0,
                 checkpoint_every: int = 1, layers: Iterable[int] | None = None, embedding: bool = True,
                 head: bool = True):
        super().__init__()
        shape = shape_of(cfg)
        assert shape.arch == "encoder", shape.arch
        self.cfg, self.activation_checkpointing, self.checkpoint_every = cfg, activation_checkpointing, checkpoint_every
        h = cfg.hidden
        layers = range(cfg.layers) if layers is None else layers
        self.embed = nn.Embedding(cfg.vocab, h) if embedding else None
        self.positions = nn.Embedding(shape.max_positions or cfg.seq_len, h) if embedding else None
        self.token_types = nn.Embedding(cfg.token_types, h) if cfg.token_types and embedding else None
        self.embed_norm = nn.LayerNorm(h, eps=cfg.norm_eps) if embedding else None
        self.blocks = nn.ModuleDict({str(i): EncoderBlock(h, cfg.heads, shape.ffn, cfg.norm_eps) for i in layers})
        # the MLM head: dense, GeLU, LayerNorm, then the decoder onto the vocabulary
        self.transform = nn.Linear(h, h) if head else None
        self.transform_norm = nn.LayerNorm(h, eps=cfg.norm_eps) if head else None
        self.head = None if cfg.tied_embeddings or not head else nn.Linear(h, cfg.vocab, bias=False)
        self.head_bias = nn.Parameter(torch.zeros(cfg.vocab)) if head else None
        if not next(self.parameters()).is_meta:
            self.init_weights(seed)

    def init_weights(self, seed: int) -> None:
        init_parameters(self, seed, self.cfg.init_std, self.cfg.layers)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                token_types: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (or, past the first stage, hidden states) in; the MLM loss, the logits (no labels) or, before the
        last stage, hidden states out."""
        x = tokens
        if self.embed is not None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)[None]  # (1, s): sequence on dim 1 (TP)
            x = self.embed(tokens) + self.positions(positions)
            if self.token_types is not None:  # one segment unless given (MLM over packed rows has no sentence pairs)
                types = torch.zeros_like(tokens) if token_types is None else token_types
                x = x + self.token_types(types)
            x = self.embed_norm(x)
        for index, block in self.blocks.items():
            policy = checkpointed(self.activation_checkpointing, self.checkpoint_every, int(index)) \
                if self.training else "none"
            x = run_block(block, policy, x)
        if self.transform is None:
            return x
        x = self.transform_norm(F.gelu(self.transform(x)))
        if self.head is None:
            logits = F.linear(x, self.embed.weight, self.head_bias)
        else:  # the head as a module, its bias added apart: tensor parallelism splits both by vocabulary
            logits = self.head(x) + self.head_bias
        return logits if labels is None else masked_cross_entropy(logits, labels)

    def aux_loss(self) -> None:
        return None

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
