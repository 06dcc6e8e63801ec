"""A decoder-only transformer: pre-norm RMSNorm, rotary positions, SwiGLU, optional GQA and tied head.

Read top to bottom like nanoGPT. Sizes come from `planner.model.shapes.ModelShape` (via
`planner.model.shapes.shape_of`), so the parameter count equals the planner's formula exactly.

A pipeline stage is the same module holding a slice of it (`Transformer.stage`): blocks keep their
index in the whole model (`blocks.7...`), so a stage's parameter names, and its checkpoint keys, are the
whole model's; the first stage alone has the embedding, the last alone the final norm and the head.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from planner.core.schema import ModelConfig
from planner.model.shapes import shape_of


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary positions (Su et al. 2021), shape (seq_len, head_dim / 2)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of the head dimension; x is (batch, heads, seq, head_dim)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[: x.shape[-2]], sin[: x.shape[-2]]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return rotated.type_as(x)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.q = nn.Linear(hidden, hidden, bias=False)
        self.k = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.o = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds heads / tp of them (pretrain.engines.parallelize)
        q = self.q(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_heads != self.heads:  # grouped-query attention: share each kv head across a group
            repeat = self.heads // self.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, s, -1))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate = nn.Linear(hidden, ffn, bias=False)
        self.up = nn.Linear(hidden, ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, ffn: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.attn = Attention(cfg.hidden, cfg.heads, cfg.kv_heads or cfg.heads)
        self.mlp_norm = nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.hidden, ffn)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss in fp32 (under tensor parallelism `logits` are vocabulary shards: `loss_parallel`)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, activation_checkpointing: bool = False, layers: Iterable[int] | None = None,
                 embedding: bool = True, head: bool = True):
        """The whole model, or (a pipeline stage) the blocks `layers` with or without the embedding and the
        output layer (final norm and head)."""
        super().__init__()
        self.cfg, self.activation_checkpointing = cfg, activation_checkpointing
        ffn = shape_of(cfg).ffn
        layers = range(cfg.layers) if layers is None else layers
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden) if embedding else None
        self.blocks = nn.ModuleDict({str(i): Block(cfg, ffn) for i in layers})
        self.norm = nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps) if head else None
        self.head = None if cfg.tied_embeddings or not head else nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        cos, sin = rope_tables(cfg.seq_len, cfg.hidden // cfg.heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # GPT-2's scaled init for the projections that write into the residual stream
                scale = (2 * self.cfg.layers) ** -0.5 if name.endswith(("o.weight", "down.weight")) else 1.0
                nn.init.normal_(p, mean=0.0, std=std * scale)

    def stage(self, layers: range, embedding: bool, head: bool) -> Transformer:
        """A pipeline stage cut from this model: blocks `layers` (and the embedding / the output layer when
        asked), holding copies of this model's weights, so a pipeline starts from the very same model."""
        if self.cfg.tied_embeddings and embedding != head:
            raise ValueError("a tied head shares the embedding: both must be on one stage")
        part = Transformer(self.cfg, self.activation_checkpointing, layers, embedding, head)
        mine = self.state_dict()
        part.load_state_dict({name: mine[name] for name in part.state_dict()})
        return part

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        """Tokens (or, past the first stage, hidden states) in; the loss, the logits (no targets) or, before
        the last stage, hidden states out."""
        x = self.embed(tokens) if self.embed is not None else tokens
        for block in self.blocks.values():
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, self.rope_cos, self.rope_sin, use_reentrant=False)
            else:
                x = block(x, self.rope_cos, self.rope_sin)
        if self.norm is None:
            return x
        x = self.norm(x)
        logits = F.linear(x, self.embed.weight) if self.head is None else self.head(x)
        if targets is None:
            return logits
        return cross_entropy(logits, targets)

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
