"""A decoder-only transformer: pre-norm RMSNorm, rotary positions, SwiGLU, optional GQA and tied head.

Read top to bottom like nanoGPT. Sizes come from `planner.model.shapes.ModelShape` (via
`planner.model.shapes.shape_of`), so the parameter count equals the planner's formula exactly.

A pipeline stage is the same module holding a slice of it (`Transformer(..., layers=...)`): blocks keep
their index in the whole model (`blocks.7...`), so a stage's parameter names, and its checkpoint keys, are
the whole model's; the first stage alone has the embedding, the last alone the final norm and the head.
Each weight is drawn from its own name and the seed (`Transformer.init_weights`), so a stage, or a
shard, built on the meta device and materialised where it runs holds what the whole model holds: no
rank ever builds more than its own part (as torchtitan builds its models).
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from planner.core.schema import ACTIVATION_CHECKPOINTING, ModelConfig
from planner.model.shapes import shape_of
from pretrain.activation_checkpointing import checkpointed, run_block

#: The model fields that set the weights' shapes: a checkpoint of another is refused (`pretrain.engines.checks`).
SHAPE_KEYS = ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "tied_embeddings", "experts", "top_k",
              "expert_ffn", "shared_experts", "shared_ffn", "dense_layers", "arch", "mlp", "max_positions",
              "token_types", "decoder_layers", "head_dim", "relative_buckets")


def resolved_shape(model: dict) -> dict:
    """`SHAPE_KEYS` of a model section with each None default resolved to what the trainer builds (kv_heads None
    is heads; ffn_hidden None is the architecture's width, ...): a config that spells a default out is the same
    shape as one that leaves it to the default."""
    known = {f.name for f in fields(ModelConfig)}
    m = ModelConfig(**{k: v for k, v in model.items() if k in known})
    shape = shape_of(m)
    out = {k: getattr(m, k) for k in SHAPE_KEYS}
    out.update(kv_heads=shape.n_kv_heads, ffn_hidden=shape.ffn, mlp=shape.mlp, head_dim=shape.head_dim,
               max_positions=m.max_positions or (m.seq_len if m.arch == "encoder" else None),
               decoder_layers=m.decoder_layers or (m.layers if m.arch == "encoder-decoder" else None))
    if m.experts:
        out.update(expert_ffn=shape.moe.expert_ffn, shared_ffn=shape.moe.shared_width)
    return out


def is_dtensor(t: object) -> bool:
    """Whether `t` is a DTensor, without importing DTensor (0.7 s) into a process that never made one: where its
    module was never imported, nothing is one."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


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


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm (Zhang & Sennrich 2019) as nn.RMSNorm computes it (fp32 statistics and product, cast back to the
    input's dtype), keeping for backward only its input, in the input's own dtype, and the fp32 reciprocal RMS:
    a·h + 4 bytes per token, as fused kernels keep (Apex's and Megatron's fused RMSNorm). nn.RMSNorm's composite
    path, what the CPU build runs, keeps the fp32 input and the fp32 normalised tensor instead: 8·h + 4.
    Backward is the textbook one: with x̂ = x·r and g = dy·w, dx = r·(g - x̂·mean(g·x̂)), dw = Σ dy·x̂."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = _at_least_fp32(x)
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd * weight).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        x_hat, dy = _at_least_fp32(x) * rstd, _at_least_fp32(grad)
        g = dy * weight
        dx = rstd * (g - x_hat * (g * x_hat).mean(-1, keepdim=True))
        dw = (dy * x_hat).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        return dx.to(x.dtype), None if dw is None else dw.to(weight.dtype), None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm's parameters and state-dict keys, `RMSNormFunction`'s lean backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RMSNormFunction.apply(x, self.weight, self.eps)


class SwiGLUProduct(torch.autograd.Function):
    """silu(gate)·up keeping only gate and up for backward (SiLU is recomputed from gate): 2·a·f bytes per
    token, not autograd's 3·a·f (gate, SiLU output, up), as fused SwiGLU kernels do (Megatron's bias_swiglu).
    Backward runs the ops autograd would (the product's two products, aten's own SiLU derivative, in the
    inputs' dtype) plus the recomputed SiLU."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        d_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        d_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        return d_gate, d_up


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
        # grouped-query attention: SDPA shares each kv head across its group itself (no expanded copies kept)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        return self.o(y.transpose(1, 2).reshape(b, s, -1))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate = nn.Linear(hidden, ffn, bias=False)
        self.up = nn.Linear(hidden, ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(SwiGLUProduct.apply(self.gate(x), self.up(x)))


class AllToAll(torch.autograd.Function):
    """`all_to_all_single` with autograd: rows `in_splits` to each rank out, `out_splits` from each rank in; the
    gradient goes back the same way reversed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        return _all_to_all(x, out_splits, in_splits, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_splits, in_splits = ctx.splits
        return _all_to_all(grad.contiguous(), in_splits, out_splits, ctx.group), None, None, None


def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    import torch.distributed as dist

    out = x.new_empty((sum(out_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
    return out


def inverse(order: torch.Tensor) -> torch.Tensor:
    """The permutation that undoes `order` (rows put back with an index, whose backward keeps only the index)."""
    out = torch.empty_like(order)
    out[order] = torch.arange(order.numel(), device=order.device)
    return out


@dataclass(frozen=True)
class FixedLoad:
    """Routing counts given instead of measured (`Experts.fixed_load`): `sent[e]` copies to expert e (all E),
    `received[r][e]` from EP rank r for local expert e."""

    sent: list[int]
    received: list[list[int]]


class Experts(nn.Module):
    """E routed SwiGLU experts, their weights stacked (E, out, in) like E `nn.Linear`s (torchtitan's GroupedExperts).
    Under expert parallelism (`pretrain.engines.parallelize`) the stacks are DTensors split by expert over the
    `ep` ranks and `group` is their process group: tokens travel to the rank holding their expert and back
    (`AllToAll`: the counts first, then the rows). Each local expert runs on its own tokens, one after another."""

    def __init__(self, hidden: int, ffn: int, experts: int):
        super().__init__()
        self.experts, self.group = experts, None  # group: the EP process group, None on one rank
        self.gate = nn.Parameter(torch.empty(experts, ffn, hidden))
        self.up = nn.Parameter(torch.empty(experts, ffn, hidden))
        self.down = nn.Parameter(torch.empty(experts, hidden, ffn))
        # `planner verify`'s dry run only: fake tensors hold no values to route by, so the copies this rank sends
        # to each expert and receives from each EP rank for each local expert are given (`FixedLoad`)
        self.fixed_load: FixedLoad | None = None

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """`x`: token copies sorted by expert, `counts[e]` of them for expert e (all E); the experts' outputs in
        the same order."""
        gate, up, down = (w.to_local() if is_dtensor(w) else w for w in (self.gate, self.up, self.down))
        local = gate.shape[0]
        sent = self.fixed_load.sent if self.fixed_load else counts.tolist()
        if self.group is None:
            return self._compute(x, sent, gate, up, down)
        ranks = self.experts // local
        received = self.fixed_load.received if self.fixed_load else self._exchange_counts(counts, ranks, local)
        in_splits = [sum(sent[r * local:(r + 1) * local]) for r in range(ranks)]
        out_splits = [sum(row) for row in received]
        y = AllToAll.apply(x, out_splits, in_splits, self.group)  # ordered by source rank, then local expert
        owner = torch.cat([torch.full((n,), e, dtype=torch.long, device=x.device)
                           for row in received for e, n in enumerate(row)])
        order = torch.argsort(owner, stable=True)  # grouped by local expert
        y = self._compute(y[order], [sum(col) for col in zip(*received, strict=True)], gate, up, down)
        return AllToAll.apply(y[inverse(order)], in_splits, out_splits, self.group)  # back in arrival order

    def _exchange_counts(self, counts: torch.Tensor, ranks: int, local: int) -> list[list[int]]:
        """received[r][e]: the copies EP rank r sends for my local expert e (one all-to-all of the counts)."""
        import torch.distributed as dist

        received = torch.empty_like(counts)
        dist.all_to_all_single(received, counts, group=self.group)
        return received.view(ranks, local).tolist()

    @staticmethod
    def _compute(x, counts: list[int], gate, up, down) -> torch.Tensor:
        # every local expert runs, even on no tokens: each weight then gets a (zero) gradient, as DDP requires
        outs = [F.linear(SwiGLUProduct.apply(F.linear(t, g), F.linear(t, u)), d)
                for t, g, u, d in zip(x.split(counts), gate, up, down, strict=True)]
        return torch.cat(outs)


class MoE(nn.Module):
    """A mixture-of-experts MLP (Shazeer et al. 2017; GShard; Switch; Mixtral): a softmax router (h x E, no bias)
    picks each token's top-k experts; the token goes to each of them and comes back weighted by the router's
    probabilities (renormalised over its k, as Mixtral); shared experts, if any, see every token (one SwiGLU as
    wide as all of them: the same parameters). Routing is dropless: every token reaches its experts.

    `aux_loss` holds the last forward's load-balancing loss (Switch, Fedus et al. 2022, eq. 4, over top-k
    assignments): E x sum_e f_e P_e, f_e the share of token copies sent to expert e, P_e its mean router
    probability; 1 when balanced."""

    def __init__(self, hidden: int, experts: int, top_k: int, expert_ffn: int, shared_ffn: int):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(hidden, experts, bias=False)
        self.experts = Experts(hidden, expert_ffn, experts)
        self.shared = SwiGLU(hidden, shared_ffn) if shared_ffn else None
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        x = x.reshape(-1, h)
        probs = self.router(x).float().softmax(-1)  # (tokens, E), fp32
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        experts = probs.shape[-1]
        fixed = self.experts.fixed_load
        counts = torch.tensor(fixed.sent, device=x.device) if fixed else torch.bincount(chosen.flatten(), minlength=experts)
        self.aux_loss = experts * (counts.float() / chosen.numel() * probs.mean(0)).sum()
        order = torch.argsort(chosen.flatten(), stable=True)  # token copies grouped by expert
        routed = self.experts(x[order // self.top_k], counts)[inverse(order)].view(-1, self.top_k, h)
        y = (routed * weights.unsqueeze(-1).to(routed.dtype)).sum(1)
        if self.shared is not None:
            y = y + self.shared(x)
        return y.view(b, s, h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, ffn: int, moe: bool = False):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.attn = Attention(cfg.hidden, cfg.heads, cfg.kv_heads or cfg.heads)
        self.mlp_norm = RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        if moe:
            m = shape_of(cfg).moe
            self.mlp = MoE(cfg.hidden, m.experts, m.top_k, m.expert_ffn, m.shared_experts * m.shared_width)
        else:
            self.mlp = SwiGLU(cfg.hidden, ffn)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


def _generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    """A generator for one weight: `seed` and a stable hash of its name (crc32; Python's hash() is salted)."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss in fp32 (under tensor parallelism `logits` are vocabulary shards: `loss_parallel`)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, activation_checkpointing: str = "none", layers: Iterable[int] | None = None,
                 embedding: bool = True, head: bool = True, seed: int = 0, checkpoint_every: int = 1):
        """The whole model, or (a pipeline stage) the blocks `layers` with or without the embedding and the
        output layer (final norm and head), its weights drawn from `seed` (`init_weights`); built under
        `torch.device("meta")` it holds none until materialised (`to_empty`, then `init_weights`). Training
        checkpoints every `checkpoint_every`-th block under `activation_checkpointing` (one of
        `planner.core.schema.ACTIVATION_CHECKPOINTING`)."""
        super().__init__()
        assert activation_checkpointing in ACTIVATION_CHECKPOINTING, activation_checkpointing
        self.cfg, self.activation_checkpointing, self.checkpoint_every = cfg, activation_checkpointing, checkpoint_every
        shape = shape_of(cfg)
        layers = range(cfg.layers) if layers is None else layers
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden) if embedding else None
        # an MoE model's layers after its leading dense ones hold a mixture of experts
        self.blocks = nn.ModuleDict({str(i): Block(cfg, shape.ffn, moe=shape.moe is not None and i >= shape.dense_layers)
                                     for i in layers})
        self.norm = RMSNorm(cfg.hidden, eps=cfg.norm_eps) if head else None
        self.head = None if cfg.tied_embeddings or not head else nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        cos, sin = rope_tables(cfg.seq_len, cfg.hidden // cfg.heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if not cos.is_meta:
            self.init_weights(seed)

    def init_weights(self, seed: int) -> None:
        """Every weight drawn from a generator of its own, seeded by `seed` and the weight's name in the whole
        model (a pipeline stage keeps those names): so any part of the model, built on the meta device and
        materialised where it runs, sharded or not, holds exactly the weights the whole model holds. Matrices
        are normal(0, init_std) (GPT-2's 1/sqrt(2 L) scale on the projections into the residual stream), norm
        weights one; the rotary tables are computed again (a meta model has none)."""
        std = self.cfg.init_std
        with torch.no_grad():
            for name, p in self.named_parameters():
                local = p.to_local() if is_dtensor(p.data) else p.data
                if p.dim() >= 2:  # matrices, and the experts' stacks of them
                    scale = (2 * self.cfg.layers) ** -0.5 \
                        if name.endswith(("o.weight", "down.weight", "experts.down")) else 1.0
                    full = torch.empty(p.shape, device=local.device).normal_(
                        0.0, std * scale, generator=_generator(seed, name, local.device))
                else:
                    full = torch.ones(p.shape, device=local.device)
                if is_dtensor(p.data):  # this rank's shard of the whole tensor, cut where FSDP / TP cut it
                    from torch.distributed.tensor import distribute_tensor

                    full = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
                local.copy_(full)
            cos, sin = rope_tables(self.cfg.seq_len, self.cfg.hidden // self.cfg.heads, self.cfg.rope_theta)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        """Tokens (or, past the first stage, hidden states) in; the loss, the logits (no targets) or, before
        the last stage, hidden states out."""
        x = self.embed(tokens) if self.embed is not None else tokens
        for index, block in self.blocks.items():
            policy = checkpointed(self.activation_checkpointing, self.checkpoint_every, int(index)) \
                if self.training else "none"
            x = run_block(block, policy, x, self.rope_cos, self.rope_sin)
        if self.norm is None:
            return x
        x = self.norm(x)
        logits = F.linear(x, self.embed.weight) if self.head is None else self.head(x)
        if targets is None:
            return logits
        loss = cross_entropy(logits, targets)
        if self.training and self.cfg.experts:  # the load-balancing loss trains the routers; evaluation is CE alone
            aux = self.aux_loss()
            if is_dtensor(loss):  # TP's loss on vocabulary shards: every TP rank routed the same tokens
                from torch.distributed.tensor import DTensor, Replicate

                aux = DTensor.from_local(aux, loss.device_mesh, [Replicate()], run_check=False)
            loss = loss + self.cfg.router_aux_loss_coef * aux
        return loss

    def aux_loss(self) -> torch.Tensor | None:
        """The MoE layers' load-balancing losses of the last forward, averaged over the layers (so the coefficient
        means the same at any depth; 1 when every layer is balanced); None for a dense model."""
        losses = [b.mlp.aux_loss for b in self.blocks.values() if isinstance(b.mlp, MoE) and b.mlp.aux_loss is not None]
        return torch.stack(losses).mean() if losses else None

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
