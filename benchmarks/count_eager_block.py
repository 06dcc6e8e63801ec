"""Count the memory-bound bytes of our block as eager PyTorch runs it, and fit `EAGER_BLOCK`.

`planner.compute.step_time.EAGER_BLOCK` prices the element-wise work of `pretrain.model.Block` (norms, RoPE,
SwiGLU's product, residual adds, casts) as bytes per token per layer, a·h + b·kv + c·f for the forward and for
the backward, by activation width. This script counts those bytes op by op
(`pretrain.memory_probe.MemoryTrafficCounter`) at seven shapes and fits a, b, c by least squares; rerun it when
the block changes and paste its output (`tests/test_step_time.py` counts again at two shapes).

`--t5` fits `planner.compute.encoder_decoder_step_time.EAGER_T5` the same way for our T5's `EncoderBlock` and
`DecoderBlock` (each MLP kind, each width), over (h, q, heads x keys, heads x keys / b, ffn, h x s / t) per
token of the block's stack, at twelve shapes with micro-batches of 2 to 4 (at 1, the attention's transposes
are views and move nothing).

    .venv/bin/python benchmarks/count_eager_block.py [--t5]
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import torch

from planner.core.schema import ModelConfig
from pretrain.encoder_decoder import DecoderBlock, EncoderBlock
from pretrain.memory_probe import MemoryTrafficCounter
from pretrain.model import Block, rope_tables

#: (hidden, heads, kv_heads, ffn): MHA and GQA, narrow and wide FFNs
SHAPES = [(256, 4, 4, 688), (384, 6, 2, 1024), (512, 8, 8, 1536), (512, 8, 2, 1376), (768, 12, 4, 2048),
          (1024, 16, 16, 2752), (1024, 16, 4, 4096)]
BATCH, SEQ = 2, 64


def counted(hidden: int, heads: int, kv: int, ffn: int, dtype: torch.dtype) -> tuple[float, float]:
    """(forward, backward) bytes per token of one block."""
    cfg = ModelConfig(layers=1, hidden=hidden, heads=heads, kv_heads=kv, ffn_hidden=ffn, vocab=256, seq_len=SEQ)
    torch.set_default_dtype(dtype)
    try:
        block = Block(cfg, ffn)
        x = torch.randn(BATCH, SEQ, hidden, requires_grad=True)
        cos, sin = rope_tables(SEQ, hidden // heads, cfg.rope_theta)
        with MemoryTrafficCounter() as fwd:
            y = block(x, cos, sin)
        with MemoryTrafficCounter() as bwd:
            y.backward(torch.ones_like(y))
    finally:
        torch.set_default_dtype(torch.float32)
    return fwd.bytes / (BATCH * SEQ), bwd.bytes / (BATCH * SEQ)


def fit(dtype: torch.dtype) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    rows = [(h, kv * h // heads, f) for h, heads, kv, f in SHAPES]
    counts = np.array([counted(*shape, dtype) for shape in SHAPES])
    design = np.array(rows, dtype=float)
    coefs = [np.linalg.lstsq(design, counts[:, i], rcond=None)[0] for i in (0, 1)]
    worst = max(abs(design @ c - counts[:, i]).max() / counts[:, i].min() for i, c in enumerate(coefs))
    return tuple(float(x) for x in coefs[0].round(1)), tuple(float(x) for x in coefs[1].round(1)), float(worst)


#: (hidden, heads, d_kv, ffn, micro-batch, inputs s, targets t): d_kv apart from h / heads, as T5's can be
T5_SHAPES = [(256, 4, 64, 512, 2, 64, 16), (256, 8, 64, 1024, 2, 128, 32), (384, 6, 64, 1536, 3, 96, 24),
             (512, 8, 64, 1024, 2, 64, 32), (512, 16, 64, 2048, 4, 32, 8), (256, 4, 96, 768, 2, 128, 16),
             (320, 5, 32, 640, 3, 64, 64), (448, 7, 64, 1792, 2, 48, 12), (384, 12, 32, 1024, 2, 80, 40),
             (256, 2, 128, 1024, 4, 40, 20), (640, 10, 64, 2560, 2, 32, 32), (512, 8, 128, 1536, 3, 56, 28)]


def counted_t5(block: str, mlp: str, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[float, float]:
    """(forward, backward) bytes per token of the block's stack of one T5 block, its inputs leaves (the bias
    with the decoder's causal mask, the encoder's output), the output's gradient made outside the count."""
    h, heads, d, f, b, s, t = shape
    cfg = ModelConfig(layers=1, hidden=h, heads=heads, ffn_hidden=f, vocab=256, seq_len=s, arch="encoder-decoder",
                      mlp=mlp, head_dim=d)
    torch.set_default_dtype(dtype)
    try:
        n = s if block == "encoder" else t
        bias = torch.randn(1, heads, n, n)
        if block == "encoder":
            module, args = EncoderBlock(cfg, f, mlp, d), ()
        else:
            module, args = DecoderBlock(cfg, f, mlp, d), (torch.randn(b, s, h, requires_grad=True),)
            bias = bias.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        x = torch.randn(b, n, h, requires_grad=True)
        with MemoryTrafficCounter() as fwd:
            y = module(x, bias.requires_grad_(), *args)
        grad = torch.ones_like(y)
        with MemoryTrafficCounter() as bwd:
            y.backward(grad)
    finally:
        torch.set_default_dtype(torch.float32)
    return fwd.bytes / (b * n), bwd.bytes / (b * n)


def t5_terms(shape: tuple[int, ...], block: str) -> list[float]:
    h, heads, d, f, b, s, t = shape
    keys = s if block == "encoder" else t
    return [h, heads * d, heads * keys, heads * keys / b, f, h * s / t if block == "decoder" else 0.0]


def fit_t5(dtype: torch.dtype, block: str, mlp: str) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    counts = np.array([counted_t5(block, mlp, shape, dtype) for shape in T5_SHAPES])
    design = np.array([t5_terms(shape, block) for shape in T5_SHAPES])
    coefs = [np.linalg.lstsq(design, counts[:, i], rcond=None)[0].round(1) for i in (0, 1)]
    worst = max(abs(design @ c - counts[:, i]).max() / counts[:, i].min() for i, c in enumerate(coefs))
    return tuple(float(x) + 0.0 for x in coefs[0]), tuple(float(x) + 0.0 for x in coefs[1]), float(worst)


def main() -> None:
    if "--t5" in sys.argv[1:]:
        for dtype, block, mlp in itertools.product((torch.float32, torch.bfloat16), ("encoder", "decoder"),
                                                   ("relu", "geglu")):
            fwd, bwd, worst = fit_t5(dtype, block, mlp)
            print(f'({dtype.itemsize}, "{block}", "{mlp}"): ({fwd}, {bwd}),  # worst residual {worst:.2%}')
        return
    for dtype in (torch.bfloat16, torch.float32):
        fwd, bwd, worst = fit(dtype)
        print(f"{dtype.itemsize}: ({fwd}, {bwd}),  # worst residual {worst:.1%}")


if __name__ == "__main__":
    main()
