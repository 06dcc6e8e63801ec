"""A synthetic corpus for tests and CPU smoke runs: token sequences from a fixed random Markov chain.

A model can learn it (loss falls from ln V toward the chain's entropy), it costs nothing to
make, and it needs no tokenizer. Real text goes through `pretrain.data` curation and tokenizers.

    python -m pretrain.data.synthetic OUT_DIR [--vocab 256] [--seq-len 64] [--rows 2048] [--seed 0]
"""

from __future__ import annotations

import sys

import numpy as np

from planner import checks
from planner.errors import guarded, one_line_parser
from pretrain.data.shards import ShardWriter


def markov_tokens(vocab: int, length: int, rng: np.random.Generator, branching: int = 4) -> np.ndarray:
    """Each token is followed by one of `branching` successors fixed per token (seeded)."""
    successors = np.random.default_rng(12345).integers(1, vocab, size=(vocab, branching))
    out = np.empty(length, dtype=np.int64)
    out[0] = rng.integers(1, vocab)
    choices = rng.integers(0, branching, size=length)
    for i in range(1, length):
        out[i] = successors[out[i - 1], choices[i]]
    return out


def write_markov_shards(out_dir, vocab: int = 256, seq_len: int = 64, rows: int = 2048, seed: int = 0,
                        rows_per_shard: int = 1024) -> dict:
    """Write `rows` rows of a Markov-chain corpus (token 0 is EOS) as a shard folder."""
    rng = np.random.default_rng(seed)
    writer = ShardWriter(out_dir, seq_len, vocab, eos_id=0, rows_per_shard=rows_per_shard)
    doc_len = 4 * seq_len
    while sum(s["rows"] for s in writer.shards) + len(writer._rows) < rows:
        writer.add(markov_tokens(vocab, doc_len, rng).tolist(), domain="synthetic")
    return writer.close({"source": "synthetic-markov", "seed": seed})


def main(argv: list[str] | None = None) -> int:
    p = one_line_parser("synthetic", __doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    def run() -> None:
        checks.integer("--vocab", a.vocab, 2, 1 << 32)
        checks.integer("--seq-len", a.seq_len, 2, 1 << 20)
        checks.integer("--rows", a.rows, 1, 1 << 31)
        m = write_markov_shards(a.out_dir, a.vocab, a.seq_len, a.rows, a.seed)
        print(f"wrote {m['rows']} rows x {m['seq_len'] + 1} tokens to {a.out_dir}")

    return guarded("synthetic", run)


if __name__ == "__main__":
    sys.exit(main())
