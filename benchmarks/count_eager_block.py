"""Count the memory-bound bytes of our block as eager PyTorch runs it, and fit `EAGER_BLOCK`.

`planner.compute.step_time.EAGER_BLOCK` prices the element-wise work of `pretrain.model.Block` (norms, RoPE,
SwiGLU's product, residual adds, casts) as bytes per token per layer, a·h + b·kv + c·f for the forward and for
the backward, by activation width. This script counts those bytes op by op
(`pretrain.memory_probe.MemoryTrafficCounter`) at seven shapes and fits a, b, c by least squares; rerun it when
the block changes and paste its output (`tests/test_step_time.py` counts again at two shapes).

    .venv/bin/python benchmarks/count_eager_block.py
"""

from __future__ import annotations

import numpy as np
import torch

from planner.core.schema import ModelConfig
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


def main() -> None:
    for dtype in (torch.bfloat16, torch.float32):
        fwd, bwd, worst = fit(dtype)
        print(f"{dtype.itemsize}: ({fwd}, {bwd}),  # worst residual {worst:.1%}")


if __name__ == "__main__":
    main()
